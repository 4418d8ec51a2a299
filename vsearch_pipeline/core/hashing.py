"""Perceptual hashes and near-duplicate grouping without all-pairs comparison.

Hashes are 64-bit pHashes stored as ``uint64``. Near-duplicate pairs are found with
multi-index hashing: the 64 bits are split into ``threshold + k`` disjoint chunks, and by the
pigeonhole principle two hashes within ``threshold`` bits of each other agree exactly on at
least ``k`` of them. Only items sharing the bits of some ``k`` chunks are compared, so the work
scales with the bucket sizes rather than with ``n**2``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from math import comb

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

HASH_BITS = 64
MAX_THRESHOLD = 32
# Upper bound on candidate pairs materialised at once; keeps memory bounded (~100 MB of
# temporaries) even when one bucket holds a huge number of identical hashes.
PAIR_BLOCK = 1 << 21
# Largest number of chunks a pair may be required to share (see choose_agreement).
MAX_AGREEMENT = 4
# Relative cost of bucketing one item versus verifying one candidate pair in the compiled
# kernel (measured: at n = 1M, threshold 10, k = 3 took 29 s and k = 4 took 53 s).
_SORT_COST = 40.0
# Buckets of the compiled kernel's counting sort: at most 2**_KEY_BITS, about n of them.
_KEY_BITS = 22

_PHASH_SIDE = 32  # imagehash: hash_size 8 x highfreq_factor 4
_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def phash64(image: Image.Image) -> int:
    """pHash (``imagehash.phash``, hash_size=8) as an unsigned 64-bit Python int.

    Bit order: imagehash's boolean hash array flattened row-major, first element is the most
    significant bit, so the value equals ``int(str(imagehash.phash(image)), 16)``.
    """
    bits = imagehash.phash(image, hash_size=8).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def phash_thumbnail(image: Image.Image) -> np.ndarray:
    """The 32x32 grey ``uint8`` thumbnail pHash transforms, made exactly as imagehash makes it.

    Split from the DCT so that threads can decode and shrink images while the DCT of many
    thumbnails runs once, batched (``phash_thumbnails``).
    """
    return np.asarray(image.convert("L").resize((_PHASH_SIDE, _PHASH_SIDE), Image.LANCZOS))


def phash_thumbnails(thumbnails: np.ndarray) -> np.ndarray:
    """pHash of a stack of ``(N, 32, 32)`` thumbnails as ``uint64``, bit for bit imagehash's.

    The same scipy DCT imagehash applies per image, applied along the axes of the whole stack
    at once, then the same strict ``> median`` of the 8x8 low frequencies: one NumPy pass
    instead of N small calls and N ``ImageHash`` objects.
    """
    import scipy.fftpack

    stack = np.asarray(thumbnails)
    if stack.shape[0] == 0:
        return np.empty(0, dtype=np.uint64)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(stack, axis=1), axis=2)
    low = dct[:, :8, :8].reshape(len(stack), HASH_BITS)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def phash_array(images: Iterable[Image.Image]) -> np.ndarray:
    """pHash of each image as a 1-D ``uint64`` array (batched DCT; equals ``phash64`` each)."""
    thumbs = [phash_thumbnail(image) for image in images]
    if not thumbs:
        return np.empty(0, dtype=np.uint64)
    return phash_thumbnails(np.stack(thumbs))


def hamming_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise ``popcount(a ^ b)`` of ``uint64`` arrays (broadcasting), as ``uint8``."""
    xor = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    return _popcount64(xor)


def _popcount64(x: np.ndarray) -> np.ndarray:
    """Popcount of a ``uint64`` array; ``np.bitwise_count`` (numpy>=2) or a byte table."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.uint8, copy=False)
    flat = np.ascontiguousarray(x, dtype=np.uint64).reshape(-1)
    per_byte = _BYTE_POPCOUNT[flat.view(np.uint8).reshape(-1, 8)]
    return per_byte.sum(axis=1, dtype=np.uint8).reshape(np.shape(x))


def check_threshold(threshold: int) -> int:
    """Validate a Hamming threshold and return it as ``int``."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | np.integer):
        raise ValueError(
            f"hamming_threshold must be an int in 0..{MAX_THRESHOLD}, got {threshold!r}"
        )
    if not 0 <= threshold <= MAX_THRESHOLD:
        raise ValueError(f"hamming_threshold must be in 0..{MAX_THRESHOLD}, got {threshold}")
    return int(threshold)


def chunk_masks(n_chunks: int) -> list[int]:
    """Masks of ``n_chunks`` disjoint contiguous chunks of near-equal width covering 64 bits."""
    widths = [HASH_BITS // n_chunks + (k < HASH_BITS % n_chunks) for k in range(n_chunks)]
    shifts = np.cumsum([0, *widths[:-1]]).tolist()
    return [((1 << w) - 1) << s for s, w in zip(shifts, widths, strict=True)]


def choose_agreement(n: int, threshold: int) -> int:
    """Pick ``k``, the number of chunks a pair must share, minimising an estimated cost.

    With ``threshold + k`` chunks, each differing bit spoils at most one chunk, so a pair
    within ``threshold`` agrees exactly on at least ``k`` chunks. ``k = 1`` is the classic
    ``threshold + 1`` split; larger ``k`` makes keys (``k`` chunks together) wider and buckets
    smaller at the price of ``C(threshold + k, k)`` sorts. For uniform hashes a ``w``-bit key
    yields about ``n**2 / 2**(w + 1)`` candidates; a sort pass is weighted as ``_SORT_COST``
    candidates per item. Any ``k`` gives exact results; this only tunes speed.
    """
    costs = {k: _agreement_cost(n, threshold, k) for k in range(1, MAX_AGREEMENT + 1)}
    return min(costs, key=lambda k: (costs[k], k))


def _agreement_cost(n: int, threshold: int, k: int) -> float:
    n_chunks = threshold + k
    if n_chunks > HASH_BITS:
        return float("inf")
    widths = [mask.bit_count() for mask in chunk_masks(n_chunks)]
    candidates = sum(
        n * n / 2.0 ** (sum(widths[c] for c in combo) + 1)
        for combo in combinations(range(n_chunks), k)
    )
    return comb(n_chunks, k) * n * _SORT_COST + candidates


def _bucket_partner_counts(sorted_keys: np.ndarray) -> np.ndarray:
    """For each position in key-sorted order, how many later positions share its key."""
    n = sorted_keys.size
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    ends = np.r_[starts[1:], n]
    bucket_end = np.repeat(ends, ends - starts)
    return bucket_end - np.arange(n) - 1


def _pair_blocks(counts: np.ndarray, block: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(left, right)`` sorted positions of all within-bucket pairs, in blocks.

    Position ``p`` pairs with ``p+1 .. p+counts[p]``. Positions are grouped so that each block
    holds about ``block`` pairs (more only when a single position alone exceeds it), which
    bounds memory even for one huge bucket of identical hashes.
    """
    active = np.flatnonzero(counts)
    if active.size == 0:
        return
    cum = np.cumsum(counts[active])
    cuts = np.unique(np.searchsorted(cum, np.arange(block, cum[-1], block)) + 1)
    for part in np.split(active, cuts):
        if part.size:
            yield _expand_pairs(part, counts[part])


def _expand_pairs(positions: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised ``[(p, p + 1 + t) for p, c in zip(positions, counts) for t in range(c)]``."""
    first_slot = np.cumsum(counts) - counts
    right = np.arange(first_slot[-1] + counts[-1], dtype=positions.dtype)
    right += np.repeat(positions + 1 - first_slot, counts)
    return np.repeat(positions, counts), right


def _owned_by_combo(xor: np.ndarray, combo: tuple[int, ...], masks: list[int]) -> np.ndarray:
    """True where ``combo`` is exactly the first ``k`` agreeing chunks of the pair.

    The combo's chunks agree by construction (same bucket), so it suffices that every other
    chunk before the combo's last one differs. Each pair is thus kept by exactly one combo,
    which replaces a global deduplication of pairs found several times.
    """
    keep = np.ones(xor.shape, dtype=bool)
    for c in range(combo[-1]):
        if c not in combo:
            keep &= (xor & np.uint64(masks[c])) != 0
    return keep


def _combo_pairs(
    hashes: np.ndarray, combo: tuple[int, ...], masks: list[int], threshold: int,
    touching: np.ndarray | None = None,
) -> Iterator[np.ndarray]:
    """Verified ``(i, j, d)`` blocks owned by ``combo`` (pairs agreeing on its chunks); with
    ``touching``, only pairs with at least one item where it is True are verified."""
    key_mask = np.uint64(sum(masks[c] for c in combo))
    keys = hashes & key_mask
    order = np.argsort(keys)
    sorted_hashes = hashes[order]
    sorted_touching = touching[order] if touching is not None else None
    for left, right in _pair_blocks(_bucket_partner_counts(keys[order]), PAIR_BLOCK):
        if sorted_touching is not None:
            wanted = sorted_touching[left] | sorted_touching[right]
            left, right = left[wanted], right[wanted]
        xor = sorted_hashes[left] ^ sorted_hashes[right]
        dist = _popcount64(xor)
        hit = np.flatnonzero(dist <= threshold)
        hit = hit[_owned_by_combo(xor[hit], combo, masks)]
        a, b = order[left[hit]], order[right[hit]]
        yield np.stack([np.minimum(a, b), np.maximum(a, b), dist[hit]], axis=1).astype(np.int64)


def mih_pairs(hashes: np.ndarray, threshold: int, agreement: int,
              touching: np.ndarray | None = None) -> np.ndarray:
    """``near_duplicate_pairs`` with an explicit number ``agreement`` of shared chunks."""
    threshold = check_threshold(threshold)
    if not 1 <= agreement <= HASH_BITS - threshold:
        raise ValueError(f"agreement must be in 1..{HASH_BITS - threshold}, got {agreement}")
    hashes = _as_hash_vector(hashes)
    masks = chunk_masks(threshold + agreement)
    kernel = _compiled_kernel()
    if kernel is not None:
        return _compiled_mih_pairs(kernel, hashes, masks, threshold, agreement, touching)
    parts = [
        block
        for combo in combinations(range(len(masks)), agreement)
        for block in _combo_pairs(hashes, combo, masks, threshold, touching)
    ]
    pairs = np.concatenate(parts) if parts else np.empty((0, 3), dtype=np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _as_hash_vector(hashes: np.ndarray) -> np.ndarray:
    hashes = np.asarray(hashes)
    if hashes.ndim != 1:
        raise ValueError(f"hashes must be 1-D, got shape {hashes.shape}")
    return hashes.astype(np.uint64, copy=False)


def near_duplicate_pairs(hashes: np.ndarray, threshold: int,
                         touching: np.ndarray | None = None) -> np.ndarray:
    """All pairs ``(i, j, distance)`` with ``i < j`` and Hamming distance ``<= threshold``.

    Returns an ``int64`` array of shape ``(P, 3)`` sorted by ``(i, j)``; identical hashes are
    pairs at distance 0. Multi-index hashing: the 64 bits are split into ``threshold + k``
    disjoint chunks, so by the pigeonhole principle a pair within the threshold agrees
    exactly on at least ``k`` chunks (``k = 1`` is the plain ``threshold + 1`` split; ``k`` is
    picked by ``choose_agreement``; 2 to 4 for large ``n``, which shrinks buckets
    enormously). For each ``k``-subset of chunks, items are sorted by those bits and only
    items in the same bucket are verified with popcount, in blocks of ``PAIR_BLOCK``
    candidates. A pair is kept only for its first agreeing subset, so no deduplication pass
    is needed. Never builds an ``n x n`` matrix; cost grows with the squared bucket sizes.

    ``touching`` (a boolean mask) restricts the result to pairs with at least one marked item:
    new hashes checked against all existing ones, without verifying old pairs again.
    """
    threshold = check_threshold(threshold)
    hashes = _as_hash_vector(hashes)
    if touching is not None:
        touching = np.asarray(touching, dtype=bool)
        if touching.shape != hashes.shape:
            raise ValueError(f"touching must have shape {hashes.shape}, got {touching.shape}")
    return mih_pairs(hashes, threshold, choose_agreement(hashes.size, threshold), touching)


def group_labels(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component label per item (``int64``) over the given pairs.

    Items in no pair get -1. Groups are numbered 0.. in order of their smallest member index,
    so labels are stable for a given input order. ``pairs`` may have 2 or 3 columns; only the
    first two (item indices) are used.
    """
    labels = np.full(n, -1, dtype=np.int64)
    edges = np.asarray(pairs, dtype=np.int64)
    if edges.size == 0:
        return labels
    if edges.ndim != 2 or edges.shape[1] < 2:
        raise ValueError(f"pairs must have shape (P, 2) or (P, 3), got {edges.shape}")
    i, j = edges[:, 0], edges[:, 1]
    if min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n:
        raise ValueError(f"pair indices must lie in 0..{n - 1}")
    graph = coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    members = np.flatnonzero(np.bincount(np.r_[i, j], minlength=n))
    _, first, inverse = np.unique(component[members], return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    labels[members] = rank[inverse]
    return labels


def group_edges(labels: np.ndarray) -> np.ndarray:
    """Pairs ``(first member, member)`` that rebuild the groups of ``labels`` (-1 = none)."""
    labels = np.asarray(labels, dtype=np.int64)
    members = np.flatnonzero(labels >= 0)
    if not members.size:
        return np.empty((0, 2), dtype=np.int64)
    _, first = np.unique(labels[members], return_index=True)
    leader_of = dict(zip(labels[members[first]].tolist(), members[first].tolist(), strict=True))
    leaders = np.array([leader_of[g] for g in labels[members].tolist()], dtype=np.int64)
    return np.stack([leaders, members], axis=1)


def _compiled_kernel():
    """The numba kernel module, or None where numba is missing (the NumPy path then runs)."""
    try:
        from vsearch_pipeline.core import hamming_kernel
    except ImportError:
        return None
    return hamming_kernel


def _compiled_mih_pairs(kernel, hashes: np.ndarray, masks: list[int], threshold: int,
                        agreement: int, touching: np.ndarray | None) -> np.ndarray:
    """``mih_pairs`` through the compiled kernel, chunk combinations spread over threads."""
    marked = np.zeros(0, np.bool_) if touching is None else np.ascontiguousarray(touching, np.bool_)
    hashes = np.ascontiguousarray(hashes)
    key_bits = int(min(_KEY_BITS, max(1, hashes.size - 1).bit_length()))

    def one(combo: tuple[int, ...]) -> np.ndarray:
        key_mask = sum(masks[c] for c in combo)
        others = np.array([masks[c] for c in range(combo[-1]) if c not in combo], np.uint64)
        shifts = np.array([(masks[c] & -masks[c]).bit_length() - 1 for c in combo], np.int64)
        widths = np.array([masks[c].bit_count() for c in combo], np.int64)
        return kernel.combo_pairs(hashes, np.uint64(key_mask), shifts, widths,
                                  min(key_bits, key_mask.bit_count()), others,
                                  np.uint64(threshold), marked)

    combos = list(combinations(range(len(masks)), agreement))
    with ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, len(combos))) as pool:
        parts = list(pool.map(one, combos))
    pairs = np.concatenate(parts) if parts else np.empty((0, 3), dtype=np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
