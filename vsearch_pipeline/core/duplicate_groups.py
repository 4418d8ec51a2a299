"""Near-duplicate groups over the whole collection, by pHash alone or by pHash and embeddings
together (core.near_duplicates) joined by the partial copies that local features find
(core.partial_copies), and the groups artifact `duplicates/<version>.parquet`: every
hashed image with its pHash, group (-1 for none) and whether it is its group's suggested keeper:
what the search service folds results, browses groups and suggests keepers by. Its metadata
says how it was made, so that a later pHash grouping with the same threshold checks only the
new hashes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from vsearch_pipeline.core.artifacts import load_embeddings
from vsearch_pipeline.core.duplicate_keepers import ImageFile, suggested_keeper
from vsearch_pipeline.core.hashing import group_edges, group_labels, near_duplicate_pairs
from vsearch_pipeline.core.layout import DUPLICATES, PARTIAL_COPY_CHECKS
from vsearch_pipeline.core.near_duplicates import (
    MIN_IMAGES_TO_CHOOSE,
    Thresholds,
    combined_near_duplicates,
    tight_groups,
)
from vsearch_pipeline.core.storage import ArtifactStore

if TYPE_CHECKING:
    from vsearch_pipeline.core.partial_copies import Check

THRESHOLD_KEY = b"vsearch.hamming_threshold"
METHOD_KEY = b"vsearch.method"
RULE_KEY = b"vsearch.rule"  # JSON: the method and the thresholds the groups were decided by
CHECKS_VERSION_KEY = b"vsearch.partial_copy_checks"  # the checks file's: how its pairs were checked


@dataclass
class Grouping:
    """What one way of grouping found: a group per image (-1: none), its figures and notes."""

    labels: np.ndarray
    mode: str
    figures: dict[str, float]
    notes: dict[str, str] = field(default_factory=dict)
    thresholds: Thresholds | None = None  # the combined rule's, None where pHash alone decided
    partial_copies: dict | None = None  # how partial copies were looked for; None: they were not

    def grouped(self) -> np.ndarray:
        """Positions of the images in a group."""
        return np.flatnonzero(self.labels >= 0)

    def sizes(self) -> np.ndarray:
        """The size of each group, by group number."""
        grouped = self.grouped()
        return np.bincount(self.labels[grouped]) if len(grouped) else np.zeros(0, int)


def phash_grouping(store: ArtifactStore, ids: list[str], hashes: np.ndarray,
                   threshold: int) -> Grouping:
    """pHashes within `threshold` bits; only new hashes checked when earlier groups exist."""
    previous = previous_groups(store, threshold)
    if previous is None:
        mode, is_new = "full", np.ones(len(ids), dtype=bool)
        pairs = near_duplicate_pairs(hashes, threshold)
        edges = pairs[:, :2]
    else:
        mode = "incremental"
        is_new = np.array([i not in previous for i in ids], dtype=bool)
        pairs = near_duplicate_pairs(hashes, threshold, touching=is_new)
        old_labels = np.array([previous.get(i, -1) for i in ids], dtype=np.int64)
        edges = np.concatenate([pairs[:, :2], group_edges(old_labels)])
    return Grouping(group_labels(len(ids), edges), mode,
                    {"checked_now": int(is_new.sum()), "new_pairs": len(pairs)})


def combined_grouping(store: ArtifactStore, model_key: str, ids: list[str], hashes: np.ndarray, *,
                      hamming_threshold: int, neighbours: int, contrast_threshold: float | None,
                      cosine_floor: float | None, partial_copies: PartialCopySearch | None = None
                      ) -> Grouping:
    """pHash and embedding signals together (core.near_duplicates), over the whole collection;
    thresholds left None are chosen from the data. With `partial_copies`, the pixels have their
    say (core.partial_copies): pairs only the contrast joined that turn out to be other shots
    of one scene are dropped, and the crops and their originals are joined.

    Images without a vector of the model (outside the sampled subset) are paired by pHash alone."""
    vectors, positions = vectors_of(store, model_key, ids)
    result = combined_near_duplicates(hashes, vectors, positions, hamming_threshold, neighbours,
                                      contrast_threshold, cosine_floor)
    figures = {"checked_now": len(ids), "new_pairs": len(result.pairs),
               "with_vectors": len(positions), "candidate_pairs": result.candidates,
               "pairs_by_contrast": result.by_contrast, "pairs_by_phash": result.by_phash,
               "neighbour_recall": round(result.neighbour_recall, 4)}
    chosen = result.thresholds
    if chosen is None:
        notes = {"threshold_choice": f"pHash alone: fewer than {MIN_IMAGES_TO_CHOOSE} images "
                                     "with vectors to choose thresholds from"}
    else:
        figures |= {"contrast_threshold": round(chosen.contrast, 4),
                    "cosine_floor": round(chosen.cosine_floor, 4), "strict_bits": chosen.strict_bits}
        notes = {"threshold_choice": chosen.chosen_by}
    notes["model"] = model_key
    pairs, copies = result.pairs[:, :2], np.empty((0, 2), np.int64)
    searched = None
    if partial_copies is not None and partial_copies.checks_per_image > 0:
        pairs, copies, partial_figures = with_pixels_checked(
            store, ids, pairs, result.by_contrast_alone, partial_copies)
        figures |= partial_figures
        searched = partial_copies.as_rule()
    if chosen is None:
        labels = group_labels(len(ids), np.concatenate([pairs, copies]))
    else:
        labels = tight_groups(len(ids), pairs, copies, vectors, positions, chosen.cosine_floor)
    return Grouping(labels, "full", figures, notes, chosen, searched)


@dataclass(frozen=True)
class PartialCopySearch:
    """How to look for partial copies: the retrieval vectors' model key, how many pairs to check
    per image, and `read`, an image's RGB array by id (None: it no longer reads)."""

    model_key: str
    checks_per_image: int
    read: Callable[[str], np.ndarray | None]
    progress: Callable[[int, int], None] = lambda done, total: None

    def as_rule(self) -> dict:
        from vsearch_pipeline.core import partial_copies as rule

        return {"checks_per_image": self.checks_per_image, "neighbours": rule.CROP_NEIGHBOURS,
                "agreement": rule.AGREEMENT, "other_shot_inliers": rule.OTHER_SHOT_INLIERS,
                "other_shot_agreement": rule.OTHER_SHOT_AGREEMENT, "whole_frame": rule.WHOLE_FRAME,
                "whole_frame_agreement": rule.WHOLE_FRAME_AGREEMENT, "vectors": self.model_key}


def with_pixels_checked(store: ArtifactStore, ids: list[str], pairs: np.ndarray,
                        by_contrast_alone: np.ndarray, search: PartialCopySearch
                        ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """core.partial_copies.pixel_checked_pairs over the collection's retrieval vectors.

    A check depends on the two images alone (ids are content hashes), so pairs an earlier run
    checked keep their result (`PARTIAL_COPY_CHECKS`) and only new ones are read and checked.
    (OpenCV is imported here, not with the module: the service reads groups without it.)"""
    from vsearch_pipeline.core.partial_copies import pixel_checked_pairs

    start = time.perf_counter()
    earlier = earlier_checks(store, set(ids))
    book: dict[tuple[str, str], Check] = {}
    vectors, positions = vectors_of(store, search.model_key, ids)
    pairs, copies, figures = pixel_checked_pairs(
        pairs, by_contrast_alone, vectors, positions, search.checks_per_image,
        lambda some, progress: _checked(some, ids, earlier, book, search.read, progress),
        search.progress)
    write_checks(store, {**earlier, **book})
    return pairs, copies, {**figures, "partial_copy_checked_now": len(book),
                           "partial_copy_seconds": round(time.perf_counter() - start, 3)}


def _checked(pairs: np.ndarray, ids: list[str], earlier: dict, book: dict,
             read: Callable[[str], np.ndarray | None],
             progress: Callable[[int, int], None] = lambda done, total: None) -> list[Check]:
    """The check of each pair: an earlier run's, else one made now (and written in `book`)."""
    from vsearch_pipeline.core.partial_copies import find_partial_copies

    keys = [(ids[a], ids[b]) if ids[a] < ids[b] else (ids[b], ids[a]) for a, b in pairs.tolist()]
    todo = [i for i, k in enumerate(keys) if k not in earlier and k not in book]
    _, made = find_partial_copies(pairs[todo].reshape(-1, 2), lambda p: read(ids[p]), progress)
    book.update(zip([keys[i] for i in todo], made, strict=True))
    return [earlier.get(k) or book[k] for k in keys]


def earlier_checks(store: ArtifactStore, present: set[str]) -> dict[tuple[str, str], Check]:
    """(id, id) -> the check of each pair checked before, of images still present, when it was
    checked the way core.partial_copies checks now."""
    from vsearch_pipeline.core.partial_copies import CHECKS_VERSION, Check

    if not store.exists(PARTIAL_COPY_CHECKS):
        return {}
    table = store.read_parquet(PARTIAL_COPY_CHECKS)
    if (table.schema.metadata or {}).get(CHECKS_VERSION_KEY) != CHECKS_VERSION.encode():
        return {}
    columns = [table.column(c).to_pylist()
               for c in ("a", "b", "inliers", "agreement", "mirrored", "smooth", "coverage")]
    nan = float("nan")
    return {(a, b): Check(n, nan if agreement is None else agreement, mirrored, smooth,
                          nan if covered is None else covered)
            for a, b, n, agreement, mirrored, smooth, covered in zip(*columns, strict=True)
            if a in present and b in present}


def write_checks(store: ArtifactStore, checks: dict[tuple[str, str], Check]) -> None:
    """The checks file, replaced whole: every pair checked, with its result."""
    from vsearch_pipeline.core.partial_copies import CHECKS_VERSION

    keys, found = list(checks), list(checks.values())
    store.write_parquet(PARTIAL_COPY_CHECKS, pa.table({
        "a": pa.array([k[0] for k in keys], pa.string()),
        "b": pa.array([k[1] for k in keys], pa.string()),
        "inliers": pa.array([c.inliers for c in found], pa.int32()),
        "agreement": pa.array([c.agreement for c in found], pa.float32()),
        "mirrored": pa.array([c.mirrored for c in found], pa.bool_()),
        "smooth": pa.array([c.smooth for c in found], pa.bool_()),
        "coverage": pa.array([c.coverage for c in found], pa.float32())},
        metadata={CHECKS_VERSION_KEY.decode(): CHECKS_VERSION}))


def vectors_of(store: ArtifactStore, model_key: str, ids: list[str]
               ) -> tuple[np.ndarray, np.ndarray]:
    """The model's vectors of the hashed images, and each one's position in `ids`."""
    try:
        vector_ids, vectors, _ = load_embeddings(store, model_key)
    except ValueError:  # nothing embedded yet: pHash alone
        return np.empty((0, 1), np.float32), np.empty(0, np.int64)
    position = {image_id: i for i, image_id in enumerate(ids)}
    rows = [(row, position[i]) for row, i in enumerate(vector_ids) if i in position]
    keep = np.array([r for r, _ in rows], dtype=np.int64)
    if len(keep) < len(vectors):  # a copy of a million vectors only where some are left out
        vectors = vectors[keep]
    return vectors, np.array([p for _, p in rows], dtype=np.int64)


def previous_groups(store: ArtifactStore, threshold: int) -> dict[str, int] | None:
    """Id -> group of the latest groups artifact when pHash alone made it with this threshold."""
    for path in reversed(store.list(DUPLICATES, ".parquet")):
        table = store.read_parquet(path)
        made = table.schema.metadata or {}
        made_with = made.get(THRESHOLD_KEY)
        if made_with is None or int(made_with) != threshold \
                or made.get(METHOD_KEY, b"phash") != b"phash":
            return None
        return dict(zip(table.column("id").to_pylist(), table.column("group").to_pylist(),
                        strict=True))
    return None


def grouping_rule(method: str, threshold: int, grouping: Grouping) -> dict:
    """What decided the groups, as the groups artifact records it and the service shows it."""
    chosen = grouping.thresholds
    return {"method": method, "hamming_threshold": threshold,
            "thresholds": chosen.as_dict() if chosen else None,
            "partial_copies": grouping.partial_copies}


def write_groups(store: ArtifactStore, path: str, ids: list[str], hashes: np.ndarray,
                 labels: np.ndarray, keeper: np.ndarray, rule: dict) -> None:
    """The groups artifact: every hashed image with its pHash, group and whether the keeper
    rule keeps it (core.duplicate_keepers), and the rule that decided the groups
    (`grouping_rule`), so the thresholds are kept with the version they made."""
    store.write_parquet(path, pa.table({
        "id": pa.array(ids, pa.string()), "phash": pa.array(hashes, pa.uint64()),
        "group": pa.array(labels, pa.int64()), "keeper": pa.array(keeper, pa.bool_())},
        metadata={THRESHOLD_KEY.decode(): str(rule["hamming_threshold"]),
                  METHOD_KEY.decode(): rule["method"], RULE_KEY.decode(): json.dumps(rule)}))


def read_groups(table: pa.Table) -> tuple[list[list[str]], list[str | None]]:
    """A groups artifact's groups, largest first (ties by their first id): the numbers the
    service, the page and the export give them; and each group's keeper by the keeper rule
    (None in a file from before keepers were suggested)."""
    ids = table.column("id").to_pylist()
    kept = (table.column("keeper").to_pylist() if "keeper" in table.column_names
            else [False] * len(ids))
    groups: dict[int, list[str]] = {}
    keeper: dict[int, str] = {}
    for image_id, group, is_kept in zip(ids, table.column("group").to_pylist(), kept, strict=True):
        if group >= 0:
            groups.setdefault(group, []).append(image_id)
            if is_kept:
                keeper[group] = image_id
    order = sorted(groups, key=lambda g: (-len(groups[g]), groups[g][0]))
    return [groups[g] for g in order], [keeper.get(g) for g in order]


def duplicates_rule(table: pa.Table) -> dict:
    """The rule the groups were decided by (method, Hamming threshold, the combined rule's
    thresholds), from the file's schema metadata; a file from before the rule was recorded
    gives its Hamming threshold alone."""
    made = table.schema.metadata or {}
    if RULE_KEY in made:
        return json.loads(made[RULE_KEY])
    return {"method": made.get(METHOD_KEY, b"phash").decode(),
            "hamming_threshold": int(made[THRESHOLD_KEY]), "thresholds": None}


def keeper_mask(ids: list[str], labels: np.ndarray, files: dict[str, list[ImageFile]]
                ) -> np.ndarray:
    """True for the member of each group that the keeper rule keeps."""
    mask = np.zeros(len(ids), dtype=bool)
    grouped = np.flatnonzero(labels >= 0)
    members: dict[int, list[int]] = {}
    for position in grouped:
        members.setdefault(int(labels[position]), []).append(int(position))
    for positions in members.values():
        keep = suggested_keeper([ids[p] for p in positions], files)
        mask[[p for p in positions if ids[p] == keep]] = True
    return mask


def group_rows(run_id: str, ids: list[str], grouping: Grouping, keeper: np.ndarray
               ) -> list[tuple[str, str, int, bool]]:
    """The rows of the DuckDB table `near_duplicate_groups`: (run id, image id, group, keeper)."""
    labels = grouping.labels
    return [(run_id, ids[i], int(labels[i]), bool(keeper[i])) for i in grouping.grouped()]


def largest_groups(ids: list[str], labels: np.ndarray, sizes: np.ndarray,
                   where: dict[str, tuple[str, str]], limit: int = 20) -> list[dict]:
    """The `limit` largest groups, with their first members' paths (an id without a file
    stands for itself)."""
    rows = []
    for group in np.argsort(-sizes, kind="stable")[:limit]:
        members = [where.get(ids[i], ("", ids[i]))[1] for i in np.flatnonzero(labels == group)]
        rows.append({"group": int(group), "size": int(sizes[group]),
                     "members": ", ".join(members[:6]) + (" ..." if len(members) > 6 else "")})
    return rows
