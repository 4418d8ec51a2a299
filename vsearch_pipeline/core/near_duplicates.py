"""Near-duplicates from two signals, pHash bits and embedding cosine, with thresholds the data picks.

pHash alone (``method: phash``) misses what changes the pixel layout: crops, flips, rotations.
The embedding sees through those, but a plain cosine threshold cannot tell a copy from another
shot of the same scene: on Caltech-101, the 435 ``Faces``/``Faces_easy`` crop pairs have a median
cosine of 0.86 while other photos of the same person in the same room reach 0.95. What marks a
copy is that it is closer to its twin than either image is to its usual neighbours. Hence the
rule of ``method: combined``:

1. **Candidates**: pairs whose pHashes are within ``hamming_threshold`` bits (multi-index
   hashing, :mod:`vsearch_pipeline.core.hashing`), and each image's ``neighbours`` nearest
   images by cosine (exact inner-product search up to ``EXACT_NEIGHBOURS_MAX`` vectors; above,
   candidates from an inverted file over PCA-reduced vectors, re-scored by their exact cosine,
   with the recall against exact search measured on a sample).
2. **Contrast**: ``contrast(a, b) = cos(a, b) - (r_a + r_b) / 2``, where ``r_x`` is the mean
   cosine of ``x`` to its ``BASELINE_NEIGHBOURS`` (5) nearest images: how much closer the pair
   is than what is ordinary around each of them (CSLS, Conneau et al. 2018, halved).
3. **Decision**: a pair is a near-duplicate when ``cos >= cosine_floor`` and either
   ``contrast >= contrast_threshold`` or its pHashes are within ``hamming_threshold // 2`` bits
   (near-identical pixels need only the floor: that keeps large groups of exact copies, whose
   contrast is about 0). A pair with an image that has no vector (outside the sampled subset)
   is decided by pHash alone, within ``hamming_threshold`` bits, as in ``method: phash``.
4. **Thresholds from the data, without labels**: ``contrast_threshold`` is Otsu's split of each
   image's best contrast (most images' best partner is an ordinary neighbour; copies form the
   upper tail), and ``cosine_floor`` is Otsu's split of each image's nearest-neighbour cosine
   (images with a close neighbour against loners, whose best contrast can be high by chance).
   Either may be fixed in the settings instead. Below ``MIN_IMAGES_TO_CHOOSE`` images with
   vectors nothing is chosen and pHash alone decides.

Measured on all 9,149 Caltech-101 + dedup_cases photos (efficientnet-lite0): at the chosen
thresholds (contrast 0.080, floor 0.744) precision 0.90 over the pairs touching the Faces and
dedup folders and recall 0.061 of the 441 known pairs (all 6 dedup_cases copy pairs, 21 of the
435 crops), against precision 0.09 and recall 0.011 for pHash alone at 8 bits; a raw cosine
threshold chosen the same way (0.74) gives precision 0.07. Most pairs counted as wrong are
consecutive shots of one person, which many would call near-duplicates too.

Exact search is quadratic in the number of images: 9,149 take about 5 s on 2 busy cores (pHash
alone: 0.02 s), 50,000 about a minute, a million would take hours. Above 50,000 vectors
`approximate_neighbours` supplies them in near-linear time; benchmarks/collection.py gives the
figures at 100k and 1M.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations

import numpy as np

from vsearch_pipeline.core.hashing import hamming_distance, near_duplicate_pairs

NEAR_DUPLICATE_METHODS = ("combined", "phash")
BASELINE_NEIGHBOURS = 5  # r_x: mean cosine to this many nearest images
MIN_IMAGES_TO_CHOOSE = 20  # fewer images with vectors: no thresholds chosen, pHash alone decides
EXACT_NEIGHBOURS_MAX = 50_000  # more vectors: approximate_neighbours supplies the neighbours
NEIGHBOUR_DIMS = 128  # PCA axes the approximate search runs in
NEIGHBOUR_PROBES = 16  # inverted lists searched per query
CANDIDATES_PER_NEIGHBOUR = 3  # candidates re-scored exactly per neighbour kept
RECALL_SAMPLE = 500  # queries whose approximate neighbours are checked against exact search


@dataclass(frozen=True)
class Thresholds:
    """What the combined rule decides by, and where each number came from."""

    contrast: float
    cosine_floor: float
    strict_bits: int  # pHash distance at or under which the cosine floor alone suffices
    chosen_by: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Candidates:
    """Candidate pairs ``(i, j)``, ``i < j``, with both signals; NaN where a vector is missing."""

    pairs: np.ndarray  # (P, 2) int64
    cosine: np.ndarray  # (P,) float32
    contrast: np.ndarray  # (P,) float32
    hamming: np.ndarray  # (P,) int64


@dataclass(frozen=True)
class Neighbours:
    """Each vector's nearest other vectors, as item positions, best first."""

    cosine: np.ndarray  # (m, k) float32
    items: np.ndarray  # (m, k) int64 item positions
    baseline: np.ndarray  # (n,) float32 r_x per item, NaN for items without a vector
    recall: float = 1.0  # of the neighbours against exact search (1.0: they are exact)


@dataclass(frozen=True)
class CombinedResult:
    pairs: np.ndarray  # (P, 2) int64, the near-duplicate pairs
    thresholds: Thresholds | None  # None: too few vectors, pHash alone decided
    candidates: int
    by_contrast: int  # pairs accepted through the contrast threshold
    by_phash: int  # pairs accepted through pHash (near-identical, or without a vector)
    neighbour_recall: float = 1.0  # of the kNN candidates against exact search
    # per pair: accepted through the contrast alone, its pHashes not near-identical (what a look
    # at the pixels may overrule: core.partial_copies)
    by_contrast_alone: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


@dataclass(frozen=True)
class PairScores:
    precision: float  # true pairs / predicted pairs with at least one member in scope
    recall: float  # true pairs found / all true pairs
    predicted_in_scope: int
    true_found: int
    truth: int

    def as_dict(self) -> dict:
        return asdict(self)


def validate_method(method: str) -> str:
    if method not in NEAR_DUPLICATE_METHODS:
        raise ValueError(f"near_duplicates.method must be one of {', '.join(NEAR_DUPLICATE_METHODS)}, "
                         f"got {method!r}")
    return method


def nearest_neighbours(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other rows by inner product: ``(cosine, row)``, each ``(m, k)``; exact
    up to ``EXACT_NEIGHBOURS_MAX`` rows, `approximate_neighbours` above.

    ``k`` shrinks to ``m - 1`` for small inputs. A row's own entry is dropped even when identical
    vectors tie with it (the last column goes where it is not among the results).
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    m = len(vectors)
    k = min(k, m - 1)
    if k < 1:
        return np.empty((m, 0), np.float32), np.empty((m, 0), np.int64)
    if m > EXACT_NEIGHBOURS_MAX:
        return approximate_neighbours(vectors, k)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    cosine, rows = index.search(vectors, k + 1)
    return _without_self(cosine, rows, k)


def _without_self(cosine: np.ndarray, rows: np.ndarray, k: int, own: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """k of the k + 1 results of each query row, its own row (`own`, default 0..m-1) left out."""
    m = len(rows)
    keep = rows != (np.arange(m) if own is None else own)[:, None]
    keep[keep.all(axis=1), -1] = False
    return cosine[keep].reshape(m, k), rows[keep].reshape(m, k).astype(np.int64)


def approximate_neighbours(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``CANDIDATES_PER_NEIGHBOUR * k`` candidates per row from an inverted file over the rows
    reduced by PCA to ``NEIGHBOUR_DIMS`` axes (``IVF{4 sqrt(m)},Flat``, ``NEIGHBOUR_PROBES``
    lists probed), re-scored by their exact cosine in full and the best ``k`` kept. Over 1,280
    dimensions the reduction makes the search about ten times cheaper; the re-scoring gives back
    exact cosines, so only a neighbour the candidates miss is lost (`neighbour_recall`)."""
    import faiss

    reduced = _reduced(vectors)
    m, d = reduced.shape
    nlist = int(4 * np.sqrt(m))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(reduced[_sample(m, 64 * nlist)])
    index.add(reduced)
    index.nprobe = NEIGHBOUR_PROBES
    candidates = index.search(reduced, CANDIDATES_PER_NEIGHBOUR * k + 1)[1]
    del reduced, index
    cosine = _row_cosines(vectors, candidates)
    cosine[(candidates < 0) | (candidates == np.arange(m)[:, None])] = -np.inf
    best = np.argsort(-cosine, axis=1, kind="stable")[:, :k]
    cosine, rows = np.take_along_axis(cosine, best, 1), np.take_along_axis(candidates, best, 1)
    missing = ~np.isfinite(cosine)  # fewer candidates than k: a harmless pair (cosine -1) to row 0
    cosine[missing], rows[missing] = -1.0, 0
    return cosine.astype(np.float32), rows.astype(np.int64)


def _reduced(vectors: np.ndarray) -> np.ndarray:
    """Unit rows of the top ``NEIGHBOUR_DIMS`` principal axes (PCA fitted on a seeded sample)."""
    import faiss

    m, d = vectors.shape
    if d <= NEIGHBOUR_DIMS:
        return vectors
    pca = faiss.PCAMatrix(d, NEIGHBOUR_DIMS)
    pca.train(vectors[_sample(m, 100_000)])
    reduced = np.concatenate([pca.apply(vectors[i:i + 65_536]) for i in range(0, m, 65_536)])
    faiss.normalize_L2(reduced)
    return reduced


def _sample(m: int, size: int) -> np.ndarray:
    return np.sort(np.random.default_rng(0).choice(m, min(m, size), replace=False))


def _row_cosines(vectors: np.ndarray, rows: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Inner product of each row with each of its ``rows`` (m, c), a chunk of rows at a time."""
    out = np.empty(rows.shape, np.float32)
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        out[start:start + chunk] = np.einsum("id,icd->ic", vectors[start:start + chunk],
                                             vectors[np.maximum(part, 0)])
    return out


def neighbour_recall(vectors: np.ndarray, rows: np.ndarray) -> float:
    """Recall of the found neighbours ``rows`` (m, k) against exact search, on a seeded sample of
    ``RECALL_SAMPLE`` rows (1.0 when the search was exact)."""
    import faiss

    m, k = rows.shape
    if m <= EXACT_NEIGHBOURS_MAX or not k:
        return 1.0
    sample = np.sort(np.random.default_rng(1).choice(m, min(m, RECALL_SAMPLE), replace=False))
    cosine, found = faiss.knn(vectors[sample], vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    truth = _without_self(cosine, found, k, own=sample)[1]
    hits = [len(set(a) & set(b)) for a, b in zip(rows[sample], truth, strict=True)]
    return float(np.sum(hits) / truth.size)


def find_neighbours(vectors: np.ndarray, positions: np.ndarray, n_items: int, k: int) -> Neighbours:
    """``nearest_neighbours`` of the vectors, mapped to item positions, with each item's ``r_x``."""
    cosine, rows = nearest_neighbours(vectors, k)
    baseline = np.full(n_items, np.nan, dtype=np.float32)
    if cosine.shape[1]:
        baseline[positions] = cosine[:, :BASELINE_NEIGHBOURS].mean(axis=1)
    return Neighbours(cosine, positions[rows], baseline, neighbour_recall(vectors, rows))


def candidate_pairs(hashes: np.ndarray, vectors: np.ndarray, positions: np.ndarray,
                    neighbours: Neighbours, hamming_bound: int) -> Candidates:
    """kNN pairs and pHash pairs within ``hamming_bound``, each once, with cosine and contrast.

    kNN pairs keep the cosine the search found; only pHash pairs get theirs computed."""
    n = len(hashes)
    knn = np.stack([np.repeat(positions, neighbours.items.shape[1]), neighbours.items.ravel()], axis=1)
    by_hash = near_duplicate_pairs(hashes, hamming_bound)[:, :2]
    row_of = np.full(n, -1, dtype=np.int64)
    row_of[positions] = np.arange(len(positions))
    ends = np.sort(np.concatenate([knn, by_hash]), axis=1).astype(np.int64)
    keys, first = np.unique(ends[:, 0] * n + ends[:, 1], return_index=True)  # 1-D: fast
    pairs = np.stack([keys // n, keys % n], axis=1)
    cosine = np.r_[neighbours.cosine.ravel(), _cosines(vectors, row_of[by_hash])][first]
    contrast = cosine - (neighbours.baseline[pairs[:, 0]] + neighbours.baseline[pairs[:, 1]]) / 2
    hamming = hamming_distance(hashes[pairs[:, 0]], hashes[pairs[:, 1]]).astype(np.int64)
    return Candidates(pairs, cosine.astype(np.float32), contrast.astype(np.float32), hamming)


def _cosines(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Inner product of each pair of vector rows; NaN where a row is -1 (no vector)."""
    out = np.full(len(rows), np.nan, dtype=np.float32)
    both = (rows >= 0).all(axis=1)
    out[both] = np.einsum("ij,ij->i", vectors[rows[both, 0]], vectors[rows[both, 1]])
    return out


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's split of a 1-D sample (the value that best separates it into two classes)."""
    from skimage.filters import threshold_otsu

    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0 or values.min() == values.max():
        raise ValueError("Otsu's split needs at least two distinct values")
    return float(threshold_otsu(values))


def choose_thresholds(neighbours: Neighbours, positions: np.ndarray, hamming_threshold: int,
                      contrast: float | None = None, cosine_floor: float | None = None
                      ) -> Thresholds | None:
    """The rule's thresholds: given ones kept, missing ones by Otsu's split (module docstring).

    None when a threshold must be chosen but fewer than ``MIN_IMAGES_TO_CHOOSE`` images have
    vectors, or all of them look alike (then pHash alone decides)."""
    strict_bits = hamming_threshold // 2
    if contrast is not None and cosine_floor is not None:
        return Thresholds(float(contrast), float(cosine_floor), strict_bits, "settings")
    if len(positions) < MIN_IMAGES_TO_CHOOSE:
        return None
    n = len(positions)
    chosen = []
    try:
        if contrast is None:
            best = (neighbours.cosine - (neighbours.baseline[positions][:, None]
                                         + neighbours.baseline[neighbours.items]) / 2).max(axis=1)
            contrast = otsu_threshold(best)
            chosen.append(f"contrast: Otsu's split of each image's best contrast (n={n})")
        if cosine_floor is None:
            cosine_floor = otsu_threshold(neighbours.cosine[:, 0])
            chosen.append(f"cosine floor: Otsu's split of each image's nearest-neighbour cosine (n={n})")
    except ValueError:  # every image alike: nothing to split
        return None
    if len(chosen) == 1:
        chosen.append("the other from settings")
    return Thresholds(float(contrast), float(cosine_floor), strict_bits, "; ".join(chosen))


def decide(candidates: Candidates, thresholds: Thresholds | None, hamming_threshold: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Masks over the candidates: (accepted by contrast, accepted by pHash)."""
    with_vectors = np.isfinite(candidates.cosine)
    by_hash_alone = candidates.hamming <= hamming_threshold
    if thresholds is None:
        return np.zeros(len(by_hash_alone), bool), by_hash_alone
    above_floor = with_vectors & (candidates.cosine >= thresholds.cosine_floor)
    by_contrast = above_floor & (candidates.contrast >= thresholds.contrast)
    near_identical = above_floor & (candidates.hamming <= thresholds.strict_bits)
    by_hash = (~with_vectors & by_hash_alone) | (near_identical & ~by_contrast)
    return by_contrast, by_hash


def combined_near_duplicates(
    hashes: np.ndarray,
    vectors: np.ndarray,
    positions: np.ndarray | None = None,
    hamming_threshold: int = 8,
    neighbours: int = 10,
    contrast_threshold: float | None = None,
    cosine_floor: float | None = None,
    thresholds: Thresholds | None = None,
) -> CombinedResult:
    """Near-duplicate pairs of ``hashes`` (``n`` uint64 pHashes) by the combined rule.

    ``vectors`` are unit rows for the items at ``positions`` (default: one per item, in order);
    items without a vector are paired by pHash alone. ``thresholds`` (e.g. chosen on another
    sample) wins over ``contrast_threshold`` and ``cosine_floor``; missing ones are chosen here.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    vectors = np.asarray(vectors, dtype=np.float32)
    positions = np.arange(len(vectors)) if positions is None else np.asarray(positions, np.int64)
    if len(positions) != len(vectors):
        raise ValueError(f"{len(vectors)} vectors but {len(positions)} positions")
    found = find_neighbours(vectors, positions, len(hashes), neighbours)
    if thresholds is None:
        thresholds = choose_thresholds(found, positions, hamming_threshold, contrast_threshold,
                                       cosine_floor)
    candidates = candidate_pairs(hashes, vectors, positions, found, hamming_threshold)
    by_contrast, by_hash = decide(candidates, thresholds, hamming_threshold)
    accepted = by_contrast | by_hash
    strict_bits = thresholds.strict_bits if thresholds is not None else -1
    alone = (by_contrast & (candidates.hamming > strict_bits))[accepted]
    return CombinedResult(candidates.pairs[accepted], thresholds, len(candidates.pairs),
                          int(by_contrast.sum()), int(by_hash.sum()), found.recall, alone)


def tight_groups(n: int, pairs: np.ndarray, trusted: np.ndarray, vectors: np.ndarray,
                 positions: np.ndarray, floor: float) -> np.ndarray:
    """Group labels over items ``0..n-1`` (as ``hashing.group_labels``): the ``trusted`` pairs
    (seen in the pixels) always join; each of ``pairs`` (vouched for by vectors or pHash),
    most alike first, joins its two groups only while the mean unit vectors of the two stay
    at least ``floor`` alike, the cosine a pair itself must reach.

    Chaining is what this stops: views of a turntable object 5 degrees apart are each a near
    pair, and linked one to the next they made all 72 views of a COIL-20 object one group.
    Items without a vector (``vectors`` are the rows of the items at ``positions``) join freely.
    """
    from vsearch_pipeline.core.hashing import group_labels

    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    row_of = np.full(n, -1, dtype=np.int64)
    row_of[positions] = np.arange(len(positions))
    parent = np.arange(n)
    sums: dict[int, np.ndarray] = {}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    def total(r: int) -> np.ndarray | None:
        if r not in sums and row_of[r] >= 0:
            sums[r] = vectors[row_of[r]].astype(np.float64)
        return sums.get(r)

    def join(a: int, b: int, guarded: bool) -> bool:
        ra, rb = root(a), root(b)
        if ra == rb:
            return True
        va, vb = total(ra), total(rb)
        if guarded and va is not None and vb is not None \
                and va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)) < floor:
            return False
        parent[rb] = ra
        if va is not None or vb is not None:
            sums[ra] = (va if va is not None else 0) + (vb if vb is not None else 0)
        sums.pop(rb, None)
        return True

    trusted = np.asarray(trusted, np.int64).reshape(-1, 2)
    kept = [edge for edge in trusted.tolist() if join(*edge, guarded=False)]
    rows = row_of[pairs]
    both = (rows >= 0).all(axis=1)
    alike = np.full(len(pairs), np.inf)
    alike[both] = np.einsum("ij,ij->i", vectors[rows[both, 0]], vectors[rows[both, 1]])
    for i in np.argsort(-alike, kind="stable"):
        if join(int(pairs[i, 0]), int(pairs[i, 1]), guarded=True):
            kept.append(pairs[i].tolist())
    return group_labels(n, np.array(kept, np.int64).reshape(-1, 2))


# --- evaluation against known copies ------------------------------------------------------------

def truth_pairs(groups: Iterable[Sequence[Hashable]]) -> set[tuple]:
    """Every pair within each group of known copies, each as a sorted tuple."""
    return {tuple(sorted(pair)) for group in groups for pair in combinations(set(group), 2)}


def reference_copy_groups(paths: Iterable[str]) -> list[list[str]]:
    """The copies the shared test photos are known to hold, among ``paths``.

    ``.../Faces/X`` with ``.../Faces_easy/X`` (Caltech-101: the same photo, cropped tighter), and
    ``.../mixed_images/X.jpg`` with its ``X_hflip``, ``X_resize`` and ``X_rotation`` copies
    (dedup_cases). Groups of one are left out."""
    groups: dict[tuple[str, str], list[str]] = {}
    for path in paths:
        folder, _, name = path.rpartition("/")
        parent, _, leaf = folder.rpartition("/")
        if leaf in ("Faces", "Faces_easy"):
            groups.setdefault(("faces", f"{parent}/{name}"), []).append(path)
        elif leaf == "mixed_images" and "_corrupt" not in name:
            stem = name.rsplit(".", 1)[0]
            for edit in ("_hflip", "_resize", "_rotation"):
                stem = stem.removesuffix(edit)
            groups.setdefault(("edits", f"{folder}/{stem}"), []).append(path)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def score_pairs(predicted: Iterable[Sequence[Hashable]], truth: set[tuple],
                in_scope: Callable[[Hashable], bool]) -> PairScores:
    """Precision and recall of predicted pairs against known ones.

    Recall: share of the ``truth`` pairs predicted. Precision: share of true pairs among the
    predicted pairs with at least one member ``in_scope`` (the items whose copies are all
    known, e.g. the ground-truth folders); pairs wholly outside it cannot be judged.
    """
    predicted = {tuple(sorted(pair)) for pair in predicted}
    judged = {p for p in predicted if in_scope(p[0]) or in_scope(p[1])}
    found = len(predicted & truth)
    return PairScores(precision=len(judged & truth) / len(judged) if judged else float("nan"),
                      recall=found / len(truth) if truth else float("nan"),
                      predicted_in_scope=len(judged), true_found=found, truth=len(truth))
