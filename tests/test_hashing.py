"""Tests for perceptual hashing and near-duplicate pair search (vsearch_pipeline.core.hashing)."""

from __future__ import annotations

from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from vsearch_pipeline.core import hashing
from vsearch_pipeline.core.hashing import (
    group_labels,
    hamming_distance,
    mih_pairs,
    near_duplicate_pairs,
    phash64,
    phash_array,
)

ALL_ONES = 0xFFFF_FFFF_FFFF_FFFF


# --- helpers -------------------------------------------------------------------------------


def random_hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2**64, size=n, dtype=np.uint64)


def flip_bits(rng: np.random.Generator, value: np.uint64, n_bits: int) -> np.uint64:
    """``value`` with ``n_bits`` distinct random bits flipped."""
    positions = rng.choice(64, size=n_bits, replace=False)
    mask = sum(1 << int(p) for p in positions)
    return np.uint64(int(value) ^ mask)


def planted_hashes(rng: np.random.Generator, threshold: int) -> np.ndarray:
    """Random hashes plus near copies (0..threshold+2 flipped bits) and exact duplicates."""
    base = random_hashes(rng, 300)
    sources = rng.choice(base.size, size=150, replace=False)
    copies = [flip_bits(rng, base[s], int(rng.integers(0, threshold + 3))) for s in sources]
    duplicates = base[rng.choice(base.size, size=20)]
    hashes = np.concatenate([base, np.array(copies, dtype=np.uint64), duplicates])
    return hashes[rng.permutation(hashes.size)]


def with_big_bucket(rng: np.random.Generator, threshold: int) -> np.ndarray:
    """500 identical hashes, a few near copies of them, and random background."""
    value = np.uint64(0x0123_4567_89AB_CDEF)
    near = [flip_bits(rng, value, int(rng.integers(1, threshold + 2))) for _ in range(20)]
    hashes = np.concatenate(
        [np.full(500, value), np.array(near, dtype=np.uint64), random_hashes(rng, 200)]
    )
    return hashes[rng.permutation(hashes.size)]


def popcount_reference(x: int) -> int:
    return bin(x).count("1")


def brute_force_pairs(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """All-pairs reference, independent of the module's popcount."""
    values = [int(h) for h in hashes]
    rows = [
        (i, j, d)
        for i in range(len(values))
        for j in range(i + 1, len(values))
        if (d := popcount_reference(values[i] ^ values[j])) <= threshold
    ]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def pair_codes(pairs: np.ndarray, n: int) -> np.ndarray:
    return pairs[:, 0].astype(np.int64) * n + pairs[:, 1]


def open_rgb(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


# --- hamming_distance ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (0, ALL_ONES, 64),
        (0, 0, 0),
        (ALL_ONES, ALL_ONES, 0),
        (0b1011, 0, 3),
        (1 << 63, 0, 1),
        (0xF0F0, 0x0FF0, 8),
        (0xAAAA_AAAA_AAAA_AAAA, 0x5555_5555_5555_5555, 64),
    ],
)
def test_hamming_distance_hand_checked(a: int, b: int, expected: int) -> None:
    result = hamming_distance(np.array([a], dtype=np.uint64), np.array([b], dtype=np.uint64))
    assert result.tolist() == [expected]


def test_hamming_distance_broadcasts() -> None:
    a = np.array([[0], [ALL_ONES], [0b111]], dtype=np.uint64)
    b = np.array([0, 1, ALL_ONES, 0b101], dtype=np.uint64)
    expected = [[0, 1, 64, 2], [64, 63, 0, 62], [3, 2, 61, 1]]
    assert hamming_distance(a, b).tolist() == expected


def test_hamming_distance_lookup_table_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    a, b = random_hashes(rng, 1000).reshape(10, 100), random_hashes(rng, 100)
    expected = [
        [popcount_reference(int(x) ^ int(y)) for x, y in zip(row, b, strict=True)] for row in a
    ]
    if hasattr(np, "bitwise_count"):
        assert hamming_distance(a, b).tolist() == expected
        monkeypatch.delattr(np, "bitwise_count")
    result = hamming_distance(a, b)
    assert result.shape == (10, 100)
    assert result.tolist() == expected


# --- near_duplicate_pairs ------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0, 4, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_pairs_match_brute_force_with_planted_duplicates(threshold: int, seed: int) -> None:
    hashes = planted_hashes(np.random.default_rng(seed), threshold)
    expected = brute_force_pairs(hashes, threshold)
    result = near_duplicate_pairs(hashes, threshold)
    assert result.dtype == np.int64
    assert result.shape == expected.shape
    np.testing.assert_array_equal(result, expected)
    assert (expected[:, 2] == 0).sum() >= 20  # the exact duplicates were really planted


@pytest.mark.parametrize("threshold", [0, 4, 10])
def test_pairs_match_brute_force_with_big_identical_bucket(
    threshold: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashes = with_big_bucket(np.random.default_rng(threshold), threshold)
    expected = brute_force_pairs(hashes, threshold)
    assert expected.shape[0] >= 500 * 499 // 2
    np.testing.assert_array_equal(near_duplicate_pairs(hashes, threshold), expected)
    # Force many blocks, including single positions with more partners than a block holds.
    monkeypatch.setattr(hashing, "PAIR_BLOCK", 97)
    np.testing.assert_array_equal(near_duplicate_pairs(hashes, threshold), expected)


@pytest.mark.parametrize(("threshold", "agreement"), [(0, 2), (4, 2), (4, 3), (10, 2), (10, 3)])
def test_multi_chunk_agreement_matches_brute_force(threshold: int, agreement: int) -> None:
    """Requiring k > 1 shared chunks (used for large n) must give the same exact answer."""
    rng = np.random.default_rng(100 + threshold + agreement)
    hashes = np.concatenate([planted_hashes(rng, threshold), with_big_bucket(rng, threshold)])
    expected = brute_force_pairs(hashes, threshold)
    np.testing.assert_array_equal(mih_pairs(hashes, threshold, agreement), expected)


def test_pairs_are_sorted_and_ordered() -> None:
    hashes = np.array([5, 5, 4, 5, 7], dtype=np.uint64)
    result = near_duplicate_pairs(hashes, 1)
    expected = [
        [0, 1, 0],
        [0, 2, 1],
        [0, 3, 0],
        [0, 4, 1],
        [1, 2, 1],
        [1, 3, 0],
        [1, 4, 1],
        [2, 3, 1],
        [3, 4, 1],
    ]
    assert result.tolist() == expected


@pytest.mark.parametrize("hashes", [np.array([], dtype=np.uint64), np.array([7], np.uint64)])
def test_pairs_of_tiny_inputs_are_empty(hashes: np.ndarray) -> None:
    result = near_duplicate_pairs(hashes, 4)
    assert result.shape == (0, 3)
    assert result.dtype == np.int64


@pytest.mark.parametrize("threshold", [-1, 33, 64, 2.5])
def test_threshold_out_of_range_raises(threshold: float) -> None:
    with pytest.raises(ValueError, match=r"hamming_threshold.*0\.\.32"):
        near_duplicate_pairs(np.zeros(3, dtype=np.uint64), threshold)  # type: ignore[arg-type]


def test_threshold_bounds_are_accepted() -> None:
    hashes = np.array([0, ALL_ONES, 0xFFFF_FFFF], dtype=np.uint64)
    assert near_duplicate_pairs(hashes, 32).tolist() == [[0, 2, 32], [1, 2, 32]]
    assert near_duplicate_pairs(hashes, 0).shape == (0, 3)


def test_scale_200k_finds_every_planted_pair() -> None:
    """Not timed, but must stay a few seconds: buckets keep it far from all-pairs work."""
    rng = np.random.default_rng(2024)
    n, n_planted, threshold = 200_000, 1000, 8
    hashes = random_hashes(rng, n)
    chosen = rng.choice(n, size=2 * n_planted, replace=False)
    sources, targets = chosen[:n_planted], chosen[n_planted:]
    flips = rng.integers(0, threshold + 1, size=n_planted)
    pairs_to_plant = zip(sources, flips, strict=True)
    hashes[targets] = [flip_bits(rng, hashes[s], int(k)) for s, k in pairs_to_plant]

    result = near_duplicate_pairs(hashes, threshold)

    planted = np.stack([np.minimum(sources, targets), np.maximum(sources, targets)], axis=1)
    found = np.isin(pair_codes(planted, n), pair_codes(result, n))
    assert found.all(), f"{(~found).sum()} planted pairs missed"
    assert (result[:, 0] < result[:, 1]).all()
    assert (result[:, 2] <= threshold).all()
    np.testing.assert_array_equal(
        result[:, 2], hamming_distance(hashes[result[:, 0]], hashes[result[:, 1]])
    )
    assert result.shape[0] < n_planted + 100  # random 64-bit hashes are almost never close


# --- group_labels --------------------------------------------------------------------------


def test_group_labels_hand_written_pairs() -> None:
    pairs = np.array([[8, 9, 3], [3, 7, 1], [2, 5, 0], [0, 3, 2]], dtype=np.int64)
    labels = group_labels(11, pairs)
    # {0, 3, 7} chained through 3 -> group 0; {2, 5} -> 1; {8, 9} -> 2; the rest singletons.
    assert labels.tolist() == [0, -1, 1, 0, -1, 1, -1, 0, 2, 2, -1]
    assert labels.dtype == np.int64


def test_group_labels_long_chain_merges_transitively() -> None:
    pairs = np.array([[5, 9], [1, 2], [2, 9], [6, 7], [0, 6]])
    labels = group_labels(10, pairs)
    assert labels.tolist() == [0, 1, 1, -1, -1, 1, 0, 0, -1, 1]


def test_group_labels_without_pairs() -> None:
    assert group_labels(4, np.empty((0, 3), dtype=np.int64)).tolist() == [-1, -1, -1, -1]
    assert group_labels(0, np.empty((0, 2), dtype=np.int64)).shape == (0,)


def test_group_labels_rejects_out_of_range_index() -> None:
    with pytest.raises(ValueError):
        group_labels(3, np.array([[0, 3]]))


def test_group_labels_from_near_duplicate_pairs() -> None:
    hashes = np.array([0b0, 0xFF00, 0b1, 0xFF01, 0xF0_0000, 0b11], dtype=np.uint64)
    labels = group_labels(hashes.size, near_duplicate_pairs(hashes, 1))
    assert labels.tolist() == [0, 1, 0, 1, -1, 0]


# --- phash on real photos ------------------------------------------------------------------


def test_phash64_close_for_resized_copy(cases: Path) -> None:
    original = phash64(open_rgb(cases / "mixed_images" / "ukbench00120.jpg"))
    resized = phash64(open_rgb(cases / "mixed_images" / "ukbench00120_resize.jpg"))
    distance = int(hamming_distance(np.uint64(original), np.uint64(resized)))
    assert distance <= 10


def test_phash64_far_for_different_photos(cases: Path) -> None:
    a = phash64(open_rgb(cases / "base_images" / "ukbench00120.jpg"))
    b = phash64(open_rgb(cases / "base_images" / "ukbench09380.jpg"))
    assert popcount_reference(a ^ b) > 20


def test_phash64_agrees_with_imagehash(cases: Path) -> None:
    paths = sorted((cases / "base_images").glob("*.jpg"))[:5]
    paths.append(cases / "mixed_images" / "ukbench00120_resize.jpg")
    images = [open_rgb(p) for p in paths]
    expected = [int(str(imagehash.phash(img)), 16) for img in images]
    assert [phash64(img) for img in images] == expected
    assert all(0 <= h < 2**64 for h in expected)
    array = phash_array(images)
    assert array.dtype == np.uint64
    assert [int(h) for h in array] == expected


def test_phash_array_empty() -> None:
    result = phash_array([])
    assert result.dtype == np.uint64
    assert result.shape == (0,)


def test_new_hashes_checked_against_old_give_the_full_grouping():
    """Incremental grouping: pairs touching the new hashes, merged with the old groups,
    equal the groups of all hashes at once."""
    from vsearch_pipeline.core.hashing import group_edges

    rng = np.random.default_rng(7)
    hashes = rng.integers(0, 2**63, 5000, dtype=np.uint64)
    hashes[100:150] = hashes[:50] ^ np.uint64(0b101)
    hashes[4900:4950] = hashes[25:75] ^ np.uint64(0b11 << 40)  # new images joining old groups
    hashes[4950:4960] = hashes[4960:4970] ^ np.uint64(1)  # new-new pairs
    old = slice(0, 4800)
    new = np.zeros(len(hashes), dtype=bool)
    new[4800:] = True
    old_labels = np.full(len(hashes), -1)
    old_labels[old] = group_labels(4800, near_duplicate_pairs(hashes[old], 6))
    touching = near_duplicate_pairs(hashes, 6, touching=new)
    assert len(touching) and all(new[i] or new[j] for i, j, _ in touching)
    merged = group_labels(len(hashes), np.concatenate([touching[:, :2], group_edges(old_labels)]))
    full = group_labels(len(hashes), near_duplicate_pairs(hashes, 6))
    assert np.array_equal(merged, full)


# --- batched pHash and the NumPy fallback --------------------------------------------------


def test_batched_phash_equals_imagehash_bit_for_bit_on_real_photos(cases: Path) -> None:
    """phash_array (one batched DCT) must equal imagehash.phash on real photos, as decoded by
    the pipeline (JPEG draft to >= 64 px) and as fully decoded, plus flat and tiny images."""
    from vsearch_pipeline.core.decode import decode_rgb

    paths = sorted(cases.rglob("*.jpg")) + sorted(cases.rglob("*.png"))
    images = [open_rgb(p) for p in paths if "corrupt" not in p.name]
    images += [decode_rgb(p.read_bytes(), min_size=64) for p in paths if "corrupt" not in p.name]
    images += [Image.new("RGB", (50, 40), (90, 90, 90)), Image.new("RGB", (3, 2), (255, 0, 0))]
    expected = [int(str(imagehash.phash(img)), 16) for img in images]
    assert [int(h) for h in phash_array(images)] == expected


@pytest.mark.parametrize("threshold", [0, 4, 10])
def test_numpy_fallback_matches_brute_force(threshold: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where numba is missing the NumPy path runs; it must give the same exact pairs."""
    monkeypatch.setattr(hashing, "_compiled_kernel", lambda: None)
    rng = np.random.default_rng(threshold)
    hashes = np.concatenate([planted_hashes(rng, threshold), with_big_bucket(rng, threshold)])
    np.testing.assert_array_equal(near_duplicate_pairs(hashes, threshold),
                                  brute_force_pairs(hashes, threshold))
