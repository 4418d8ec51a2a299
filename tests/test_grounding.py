"""Grounding sets: parsing, formatting, resolution to ids, folder-derived sets."""

from __future__ import annotations

import numpy as np
import pytest

from vsearch_pipeline.core.grounding import (
    GroundingSet,
    format_grounding,
    grounding_from_folders,
    parse_grounding,
    resolve_grounding,
)

ROWS = [
    ("cat", "animals/cat_01.jpg"),
    ("cat", "animals/cat_02.jpg"),
    ("coffee", "3f9a0c1d2e4b5a69"),
    ("a, b", 'odd "quoted" name.jpg'),  # needs CSV quoting
    ("café", "s3://bucket/photos/ünïcode.jpg"),
]


def test_format_then_parse_round_trip() -> None:
    text = format_grounding(ROWS)
    assert text.startswith("group,image\n")
    assert text.endswith("\n")
    parsed = parse_grounding("pets", text)
    assert isinstance(parsed, GroundingSet)
    assert parsed.name == "pets"
    assert parsed.rows == ROWS


def test_format_of_no_rows_is_a_header_only() -> None:
    text = format_grounding([])
    assert text == "group,image\n"
    assert parse_grounding("empty", text).rows == []


def test_comments_and_blank_lines_are_ignored() -> None:
    text = "# made by hand\n\ngroup,image\n# cats first\ncat,a.jpg\n\n   \ncat,b.jpg\n# end\n"
    assert parse_grounding("s", text).rows == [("cat", "a.jpg"), ("cat", "b.jpg")]


def test_values_are_stripped_and_column_order_is_free() -> None:
    text = "image,group\n a.jpg , cat \nb.jpg,dog\n"
    assert parse_grounding("s", text).rows == [("cat", "a.jpg"), ("dog", "b.jpg")]


@pytest.mark.parametrize(
    "text",
    ["", "# only a comment\n", "name,file\ncat,a.jpg\n", "group\ncat\n", "image\na.jpg\n"],
)
def test_bad_header_raises(text: str) -> None:
    with pytest.raises(ValueError, match=r"grounding set 'broken': the header must be 'group,image'"):
        parse_grounding("broken", text)


@pytest.mark.parametrize("line", ["cat,", ",a.jpg", "cat", "  ,  "])
def test_missing_group_or_image_raises(line: str) -> None:
    # The error names the line of the file, counting comments and blank lines.
    with pytest.raises(ValueError, match=r"grounding set 's', line 5: group and image are required"):
        parse_grounding("s", f"# a comment\ngroup,image\n\ncat,ok.jpg\n{line}\n")


# Three images: id -> (uri, relative path).
IMAGES = {
    "00000000000000a1": ("s3://b/root/animals/cat_01.jpg", "animals/cat_01.jpg"),
    "00000000000000a2": ("s3://b/root/animals/cat_02.jpg", "animals/cat_02.jpg"),
    "00000000000000b1": ("s3://b/root/drinks/coffee.jpg", "drinks/coffee.jpg"),
}
LOOKUP = {key: image_id for image_id, keys in IMAGES.items() for key in (image_id, *keys)}


def test_resolve_by_id_uri_and_relative_path() -> None:
    grounding = GroundingSet("g", [
        ("cat", "00000000000000a1"),  # by id
        ("cat", "s3://b/root/animals/cat_02.jpg"),  # by URI
        ("drink", "drinks/coffee.jpg"),  # by relative path
    ])
    resolved = resolve_grounding(grounding, LOOKUP)
    assert resolved.name == "g"
    assert resolved.group_names == ["cat", "drink"]
    assert resolved.group_of == {"00000000000000a1": 0, "00000000000000a2": 0, "00000000000000b1": 1}
    assert resolved.unresolved == []
    labels = resolved.labels_for(["00000000000000b1", "zzz", "00000000000000a2"])
    assert labels.dtype == np.int64
    assert labels.tolist() == [1, -1, 0]


def test_unresolved_references_are_reported_in_order() -> None:
    grounding = GroundingSet("g", [
        ("cat", "animals/cat_01.jpg"),
        ("cat", "animals/cat_03.jpg"),
        ("ghost", "ffffffffffffffff"),
        ("cat", "Animals/cat_02.jpg"),  # case matters
    ])
    resolved = resolve_grounding(grounding, LOOKUP)
    assert resolved.unresolved == ["animals/cat_03.jpg", "ffffffffffffffff", "Animals/cat_02.jpg"]
    assert resolved.group_of == {"00000000000000a1": 0}
    assert "ghost" not in resolved.group_names  # a group with no resolved image gets no index


def test_first_group_wins_for_an_image_named_twice() -> None:
    grounding = GroundingSet("g", [
        ("drink", "drinks/coffee.jpg"),
        ("cat", "animals/cat_01.jpg"),
        ("cat", "00000000000000b1"),  # coffee again, by id, under another group
        ("drink", "s3://b/root/animals/cat_01.jpg"),  # cat_01 again, by URI
    ])
    resolved = resolve_grounding(grounding, LOOKUP)
    drink, cat = resolved.group_names.index("drink"), resolved.group_names.index("cat")
    assert resolved.group_of["00000000000000b1"] == drink
    assert resolved.group_of["00000000000000a1"] == cat
    assert resolved.unresolved == []


PATHS = [
    "top.jpg",  # at the root: no folder, no group
    "animals/cat/01.jpg",
    "animals/cat/02.jpg",
    "animals/dog/01.jpg",
    "animals/x.jpg",
    "drinks/coffee/espresso/1.jpg",
    "other.png",
]


def test_grounding_from_folders_depth_1() -> None:
    assert grounding_from_folders(PATHS, depth=1) == [
        ("animals", "animals/cat/01.jpg"),
        ("animals", "animals/cat/02.jpg"),
        ("animals", "animals/dog/01.jpg"),
        ("animals", "animals/x.jpg"),
        ("drinks", "drinks/coffee/espresso/1.jpg"),
    ]


def test_grounding_from_folders_depth_2() -> None:
    assert grounding_from_folders(PATHS, depth=2) == [
        ("animals/cat", "animals/cat/01.jpg"),
        ("animals/cat", "animals/cat/02.jpg"),
        ("animals/dog", "animals/dog/01.jpg"),
        ("animals", "animals/x.jpg"),  # shallower than depth: its own folder
        ("drinks/coffee", "drinks/coffee/espresso/1.jpg"),
    ]


def test_files_at_the_root_are_skipped() -> None:
    assert grounding_from_folders(["a.jpg", "b.png"], depth=1) == []
    assert grounding_from_folders([], depth=3) == []


def test_folder_grounding_survives_format_and_parse() -> None:
    rows = grounding_from_folders(PATHS, depth=2)
    assert parse_grounding("folders", format_grounding(rows)).rows == rows


def test_round_trip_of_names_starting_with_hash() -> None:
    rows = [("#2024", "#2024/a.jpg"), ("cats", "cats/b.jpg")]
    assert parse_grounding("s", format_grounding(rows)).rows == rows


def test_ratings_become_one_group_per_query():
    from vsearch_pipeline.core.grounding import grounding_from_ratings, grounding_from_tags

    ratings = [("image:q1", "a", True), ("image:q1", "b", True), ("image:q1", "c", False),
               ("text:boats", "d", True), ("text:boats", "e", True), ("text:boats", "f", True),
               ("text:alone", "g", True), ("image:q2", "h", False)]
    rows = grounding_from_ratings(ratings)
    assert rows == [("image:q1", "q1"), ("image:q1", "a"), ("image:q1", "b"),
                    ("text:boats", "d"), ("text:boats", "e"), ("text:boats", "f")]
    assert grounding_from_tags([("x", "1"), ("y", "2"), ("y", "3"), ("x", "4"), ("x", "5")]) == [
        ("x", "1"), ("x", "4"), ("x", "5"), ("y", "2"), ("y", "3")]


def test_cases_name_slices_that_are_measured_on_their_own() -> None:
    """A `case` column (written and read back) slices the set: each case's images are the
    queries of `<set>/<case>`, and its near-duplicate pairs are those that hold one of them."""
    from vsearch_pipeline.core.evaluation import pair_precision, pair_recall
    from vsearch_pipeline.core.grounding import case_slices

    rows = [("cat", "cat/original.png", "original"), ("cat", "cat/crop.jpg", "crop"),
            ("cat", "cat/quarter.jpg", "quarter"), ("cup", "cup/original.png", "original"),
            ("cup", "cup/quarter.jpg", "quarter")]
    parsed = parse_grounding("demo", format_grounding(rows))
    assert parsed.rows == [(g, i) for g, i, _ in rows] and parsed.cases["cup/quarter.jpg"] == "quarter"
    resolved = resolve_grounding(parsed, {i: i for _, i, _ in rows})
    slices = dict(case_slices(resolved))
    assert list(slices) == ["demo/crop", "demo/original", "demo/quarter"]
    assert slices["demo/quarter"] == {"cat/quarter.jpg", "cup/quarter.jpg"}
    joined = {"cat/original.png": 0, "cat/crop.jpg": 0, "cup/original.png": 1}  # quarters: none
    assert pair_recall(resolved, joined) == 1 / 4  # 4 same-group pairs, 1 joined
    assert pair_recall(resolved, joined, slices["demo/quarter"]) == 0.0
    assert pair_recall(resolved, joined, slices["demo/crop"]) == 1 / 2
    wrong = {**joined, "cup/quarter.jpg": 0}  # a cup joined to the cat's group
    assert pair_precision(resolved, joined) == 1.0  # 1 near-duplicate pair, in one group
    assert pair_precision(resolved, wrong) == 1 / 3  # cat-cat right; cup-cat twice wrong
    assert pair_precision(resolved, wrong, slices["demo/quarter"]) == 0.0
    assert np.isnan(pair_precision(resolved, {}))
    assert "case" not in format_grounding([("cat", "a.jpg")]).splitlines()[0]
