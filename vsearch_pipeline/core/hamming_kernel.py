"""Compiled (numba) kernel of multi-index hashing, used by ``hashing.mih_pairs``.

Why compiled: at a million hashes and threshold 10 the NumPy formulation materialises billions
of candidate pairs in temporaries and sorts the whole array hundreds of times (about 5 minutes
on 2 cores). Here one chunk combination is a counting sort into about ``n`` buckets and a tight
loop over the pairs of each bucket, with no temporaries; ``nogil`` lets threads run several
combinations at once. numba comes with umap-learn, a core dependency.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _popcount(x: np.uint64) -> np.uint64:
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@njit(cache=True, nogil=True)
def _bucket_keys(hashes: np.ndarray, shifts: np.ndarray, widths: np.ndarray, key_bits: int) -> np.ndarray:
    """The combination's chunks concatenated, cut to the low ``key_bits`` bits (a superset key:
    equal chunks give equal keys; equal keys are re-checked on the full chunks)."""
    low = np.uint64((1 << key_bits) - 1)
    keys = np.empty(hashes.size, np.int64)
    for i in range(hashes.size):
        value = np.uint64(0)
        for c in range(shifts.size):
            width = np.uint64(widths[c])
            chunk = (hashes[i] >> np.uint64(shifts[c])) & ((np.uint64(1) << width) - np.uint64(1))
            value = (value << width) | chunk
        keys[i] = np.int64(value & low)
    return keys


@njit(cache=True, nogil=True)
def _counting_sort(keys: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """Bucket starts (``n_keys + 1``) and item indices in bucket order."""
    starts = np.zeros(n_keys + 1, np.int64)
    for key in keys:
        starts[key + 1] += 1
    for b in range(n_keys):
        starts[b + 1] += starts[b]
    fill = starts[:-1].copy()
    index = np.empty(keys.size, np.int64)
    for i in range(keys.size):
        index[fill[keys[i]]] = i
        fill[keys[i]] += 1
    return starts, index


@njit(cache=True, inline="always")
def _owned(xor: np.uint64, key_mask: np.uint64, others: np.ndarray) -> bool:
    """The combination's chunks all agree and every earlier chunk outside it differs, so each
    pair is reported by exactly one combination (its first ``k`` agreeing chunks)."""
    if xor & key_mask:
        return False
    for mask in others:  # noqa: SIM110 (a loop; numba compiles no generator in all())
        if xor & mask == 0:
            return False
    return True


@njit(cache=True, nogil=True)
def combo_pairs(hashes: np.ndarray, key_mask: np.uint64, shifts: np.ndarray, widths: np.ndarray,
                key_bits: int, others: np.ndarray, threshold: np.uint64,
                touching: np.ndarray) -> np.ndarray:
    """``(i, j, d)`` rows (``i < j``, unsorted) owned by one chunk combination; an empty
    ``touching`` means all pairs, else pairs with at least one marked item."""
    starts, index = _counting_sort(_bucket_keys(hashes, shifts, widths, key_bits), 1 << key_bits)
    ordered = hashes[index]
    marked = touching[index] if touching.size else touching
    out = np.empty((64, 3), np.int64)
    m = 0
    for b in range(starts.size - 1):
        for p in range(starts[b], starts[b + 1] - 1):
            for q in range(p + 1, starts[b + 1]):
                if marked.size and not (marked[p] or marked[q]):
                    continue
                xor = ordered[p] ^ ordered[q]
                distance = _popcount(xor)
                if distance > threshold or not _owned(xor, key_mask, others):
                    continue
                if m == out.shape[0]:
                    grown = np.empty((2 * m, 3), np.int64)
                    grown[:m] = out
                    out = grown
                out[m, 0] = min(index[p], index[q])
                out[m, 1] = max(index[p], index[q])
                out[m, 2] = np.int64(distance)
                m += 1
    return out[:m]
