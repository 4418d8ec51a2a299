"""Deterministic, stable subsets (vsearch_pipeline.core.sampling)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vsearch_pipeline.core.sampling import (
    forced_mask,
    sample_score,
    select_subset,
    unmatched_force_include,
    validate_fraction,
)

IDS = [f"{i:016x}" for i in range(20_000)]


def test_same_inputs_give_the_same_subset() -> None:
    first, scores_a = select_subset(IDS[:2000], 0.3, seed=7)
    second, scores_b = select_subset(IDS[:2000], 0.3, seed=7)
    assert first.dtype == bool and first.shape == (2000,)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(scores_a, scores_b)
    # The score depends on the seed and the id only, not on the position in the list.
    assert scores_a[5] == sample_score(IDS[5], 7)


def test_scores_are_in_unit_interval() -> None:
    _, scores = select_subset(IDS[:5000], 0.5, seed=1)
    assert scores.min() >= 0.0 and scores.max() < 1.0
    # Roughly uniform: each decile holds about a tenth of the ids.
    counts = np.histogram(scores, bins=10, range=(0.0, 1.0))[0]
    assert counts.min() > 400 and counts.max() < 600


def test_different_seed_gives_a_different_subset() -> None:
    a, _ = select_subset(IDS[:2000], 0.3, seed=1)
    b, _ = select_subset(IDS[:2000], 0.3, seed=2)
    assert not np.array_equal(a, b)
    # Independent draws: the overlap is near 0.3 * 0.3 of the ids, far from all of the chosen.
    overlap = (a & b).sum() / len(a)
    assert 0.05 < overlap < 0.15


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 0.9])
def test_share_chosen_is_close_to_fraction(fraction: float) -> None:
    chosen, _ = select_subset(IDS, fraction, seed=0)
    assert abs(chosen.mean() - fraction) < 0.02


def test_fraction_one_keeps_everything() -> None:
    chosen, _ = select_subset(IDS[:1000], 1.0, seed=3)
    assert chosen.all()


def test_subsets_are_nested_in_fraction() -> None:
    small, _ = select_subset(IDS[:3000], 0.2, seed=4)
    large, _ = select_subset(IDS[:3000], 0.6, seed=4)
    assert small.sum() < large.sum()
    assert not (small & ~large).any()  # every image in the 20 % subset is in the 60 % one


def test_forced_ids_are_always_in() -> None:
    ids = IDS[:500]
    _, scores = select_subset(ids, 0.1, seed=9)
    # Pick rows that the hash alone would leave out, then force them in by id, path or URI.
    out = [i for i in range(len(ids)) if scores[i] >= 0.1][:3]
    assert len(out) == 3
    keys = [(image_id, f"dir/{n}.jpg", f"s3://bucket/dir/{n}.jpg") for n, image_id in enumerate(ids)]
    force = [ids[out[0]], f"dir/{out[1]}.jpg", f"s3://bucket/dir/{out[2]}.jpg"]
    mask = forced_mask(keys, force)
    assert mask.dtype == bool
    assert sorted(np.flatnonzero(mask).tolist()) == sorted(out)
    chosen, _ = select_subset(ids, 0.1, seed=9, forced=mask)
    assert chosen[out].all()
    # Forcing adds the forced rows and changes nothing else.
    plain, _ = select_subset(ids, 0.1, seed=9)
    assert chosen.sum() == plain.sum() + 3
    np.testing.assert_array_equal(chosen & ~mask, plain & ~mask)


def test_forced_mask_with_nothing_forced() -> None:
    mask = forced_mask([("a", "a.jpg"), ("b", "b.jpg")], [])
    assert mask.tolist() == [False, False]


def test_adding_ids_never_changes_old_decisions() -> None:
    old = IDS[:4000]
    new = IDS[4000:6000]
    before, _ = select_subset(old, 0.25, seed=11)
    # New ids appended and also shuffled in between: each old id keeps its decision.
    mixed = list(new[:1000]) + list(old) + list(new[1000:])
    after, _ = select_subset(mixed, 0.25, seed=11)
    decision = dict(zip(mixed, after.tolist(), strict=True))
    assert [decision[i] for i in old] == before.tolist()


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.0001, 2.0, math.nan])
def test_fraction_outside_unit_interval_raises(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"subset\.fraction"):
        validate_fraction(fraction)
    with pytest.raises(ValueError, match=r"subset\.fraction"):
        select_subset(IDS[:10], fraction, seed=0)


def test_valid_fraction_is_returned() -> None:
    assert validate_fraction(0.25) == 0.25
    assert validate_fraction(1.0) == 1.0


def test_unmatched_force_include_lists_typos() -> None:
    keys = [("id1", "a/x.jpg", "s3://b/a/x.jpg"), ("id2", "a/y.jpg", "s3://b/a/y.jpg")]
    force = ["id1", "a/y.jpg", "a/x.jgp", "id3", "s3://b/a/x.jpg"]
    assert unmatched_force_include(force, keys) == ["a/x.jgp", "id3"]
    assert unmatched_force_include(["id2", "a/x.jpg"], keys) == []
    assert unmatched_force_include([], keys) == []
