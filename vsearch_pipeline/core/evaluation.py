"""Retrieval quality of an index against grounding sets: every grounded image in the index is a
query, the other members of its group the relevant answers, the query itself left out of its
results; and how many same-group pairs the near-duplicate groups put together."""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np
import pyarrow as pa

from vsearch_pipeline.core.artifacts import reference_lookup
from vsearch_pipeline.core.grounding import (
    ResolvedGrounding,
    case_slices,
    parse_grounding,
    resolve_grounding,
)
from vsearch_pipeline.core.layout import CURATION_SETS, curation_set_path
from vsearch_pipeline.core.metrics import retrieval_metrics
from vsearch_pipeline.core.retrieval import VectorTransform
from vsearch_pipeline.core.storage import ArtifactStore


class SearchableIndex(Protocol):
    """What the evaluation needs of a loaded index (catalog.LoadedIndex)."""

    transform: VectorTransform

    @property
    def ids(self) -> list[str]: ...

    @property
    def position_of(self) -> dict[str, int]: ...

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def retrieval_label(build: dict) -> str:
    """The post-processing an index was built and is queried with, in one comparable string,
    e.g. 'whiten=256,dba=10,qe=10x2,alpha=3.0,rerank=none,ndfloor=0.75' (the `retrieval`
    column; qe is neighbours x rounds), with ',head=<version>' when a projection head is used."""
    retrieval = build.get("retrieval") or {}
    plan = retrieval.get("query_plan") or {}
    transform = retrieval.get("transform") or {}
    whitening = transform.get("whitening_dims", 0)
    qe_k = plan.get("query_expansion_k", 0)
    qe = f"{qe_k}x{plan.get('query_expansion_rounds', 1)}" if qe_k else "0"
    label = (f"whiten={whitening},dba={retrieval.get('database_augmentation_k', 0)},"
             f"qe={qe},alpha={plan.get('expansion_alpha', 0)},"
             f"rerank={plan.get('rerank', 'none')},ndfloor={plan.get('near_duplicate_floor', 1.0)}")
    head = transform.get("head_version")
    return f"{label},head={head}" if head else label


def curation_sets(store: ArtifactStore, manifest: pa.Table) -> list[ResolvedGrounding]:
    """The grounding sets made from what people said in the search service, once they hold a
    group."""
    found = []
    lookup = reference_lookup(manifest)
    for name in CURATION_SETS:
        path = curation_set_path(name)
        if store.exists(path):
            resolved = resolve_grounding(parse_grounding(name, store.read_bytes(path), path),
                                         lookup)
            if resolved.group_of:
                found.append(resolved)
    return found


def measure_grounding(loaded: SearchableIndex, grounding: ResolvedGrounding,
                      vectors: np.ndarray, vector_of: dict[str, int], ks: list[int],
                      duplicate_group: dict[str, int],
                      only: set[str] | None = None) -> dict[str, float]:
    """Every figure of one grounding set: retrieval quality, the seconds it took, the
    near-duplicate pair recall and precision and the references that name no image. With `only` (a slice:
    the images of one case), those images alone are the queries and the pairs counted."""
    start = time.perf_counter()
    figures = evaluate(loaded, grounding, vectors, vector_of, ks, only)
    figures["seconds"] = time.perf_counter() - start
    figures["duplicate_pair_recall"] = pair_recall(grounding, duplicate_group, only)
    figures["duplicate_pair_precision"] = pair_precision(grounding, duplicate_group, only)
    figures["unresolved_references"] = len(grounding.unresolved)
    return figures


def measure_with_slices(loaded: SearchableIndex, grounding: ResolvedGrounding,
                        vectors: np.ndarray, vector_of: dict[str, int], ks: list[int],
                        duplicate_group: dict[str, int]) -> list[tuple[str, dict[str, float]]]:
    """(name, figures) of the set, then of each case it names (`<set>/<case>`)."""
    measured = [(grounding.name, measure_grounding(loaded, grounding, vectors, vector_of, ks,
                                                   duplicate_group))]
    for name, ids in case_slices(grounding):
        measured.append((name, measure_grounding(loaded, grounding, vectors, vector_of, ks,
                                                 duplicate_group, ids)))
    return measured


def evaluate(loaded: SearchableIndex, grounding: ResolvedGrounding, vectors: np.ndarray,
             vector_of: dict[str, int], ks: list[int], only: set[str] | None = None
             ) -> dict[str, float]:
    """Precision, recall, mAP, nDCG and hit rate at each k of the set's queries (with `only`,
    of those queries alone; the relevant answers are still the whole group)."""
    positions = loaded.position_of
    item_groups = grounding.labels_for(loaded.ids)
    queries = [i for i in grounding.group_of if i in positions and i in vector_of
               and (only is None or i in only)]
    k = max(ks)
    if not queries:
        return {"queries": 0, "skipped_queries": 0}
    found = loaded.search(loaded.transform.apply(vectors[[vector_of[i] for i in queries]]), k + 1)[1]
    own = np.array([positions[i] for i in queries])
    ranked = np.full((len(queries), k), -1, dtype=np.int64)
    for row, (hits, me) in enumerate(zip(found, own, strict=True)):
        others = hits[hits != me][:k]
        ranked[row, : len(others)] = others
    query_groups = np.array([grounding.group_of[i] for i in queries])
    return retrieval_metrics(ranked, query_groups, item_groups, ks=[x for x in ks if x <= k])


def _pairs(n: int) -> int:
    return n * (n - 1) // 2


def _joined_pairs(ids: list[str], duplicate_group: dict[str, int]) -> int:
    """How many pairs of `ids` share a near-duplicate group."""
    labels = np.array([duplicate_group.get(i, -1) for i in ids], dtype=np.int64)
    counts = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, np.int64)
    return int((counts * (counts - 1) // 2).sum())


def pair_recall(grounding: ResolvedGrounding, duplicate_group: dict[str, int],
                only: set[str] | None = None) -> float:
    """Share of same-group pairs that fall in one near-duplicate group (NaN if no pairs); with
    `only`, of the pairs that hold at least one of those images."""
    return _pair_share(grounding.group_of, duplicate_group, only)


def pair_precision(grounding: ResolvedGrounding, duplicate_group: dict[str, int],
                   only: set[str] | None = None) -> float:
    """Share of the near-duplicate pairs among the set's images (two images of the set in one
    near-duplicate group) that the set puts in one group too (NaN if there are none); with
    `only`, of the pairs that hold at least one of those images."""
    in_set = {i: duplicate_group[i] for i in grounding.group_of if duplicate_group.get(i, -1) >= 0}
    return _pair_share(in_set, grounding.group_of, only)


def _pair_share(groups: dict[str, int], other: dict[str, int], only: set[str] | None) -> float:
    """Share of the pairs within `groups` (id -> group) that `other` puts in one group too (NaN
    if there are none); with `only`, of the pairs that hold at least one of those ids."""
    members: dict[int, list[str]] = {}
    for image_id, group in groups.items():
        members.setdefault(group, []).append(image_id)
    together = total = 0
    for ids in members.values():
        rest = [i for i in ids if i not in only] if only is not None else []
        together += _joined_pairs(ids, other) - _joined_pairs(rest, other)
        total += _pairs(len(ids)) - _pairs(len(rest))
    return together / total if total else float("nan")
