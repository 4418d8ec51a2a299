"""The keeper rule, the files to drop and the duplicates across two parts, on made-up files."""

from vsearch_pipeline.core.duplicate_keepers import (
    ImageFile,
    between_rows,
    drop_rows,
    keeper_of,
    suggested_keeper,
)


def file(image_id, path, size=(640, 480), nbytes=100_000, fmt="JPEG", batch="b00001"):
    return ImageFile(image_id, f"file:///c/{path}", path, size[0], size[1], nbytes, fmt, batch)


def test_the_rule_prefers_pixels_then_bytes_then_the_groups_format_then_the_first_seen():
    files = {"big": [file("big", "a/big.jpg", size=(1280, 960))],
             "small": [file("small", "a/small.jpg", nbytes=900_000)]}
    assert suggested_keeper(["small", "big"], files) == "big"  # pixels first
    files = {"reencoded": [file("reencoded", "a/r.jpg", nbytes=40_000)],
             "original": [file("original", "a/o.jpg", nbytes=120_000)]}
    assert suggested_keeper(["reencoded", "original"], files) == "original"
    files = {"png": [file("png", "a/x.png", fmt="PNG")], "j1": [file("j1", "a/j1.jpg")],
             "j2": [file("j2", "b/j2.jpg")]}
    assert suggested_keeper(["png", "j2", "j1"], files) == "j1"  # JPEG group; then the path
    files = {"late": [file("late", "a/a.jpg", batch="b00002")],
             "early": [file("early", "z/z.jpg", batch="b00001")]}
    assert suggested_keeper(["late", "early"], files) == "early"
    assert suggested_keeper(["unknown"], files) is None


def test_every_file_but_the_keepers_is_dropped_and_a_persons_choice_wins():
    files = {"orig": [file("orig", "a/orig.jpg", size=(1000, 800)),
                      file("orig", "copies/orig-copy.jpg", size=(1000, 800))],  # same bytes
             "thumb": [file("thumb", "a/thumb.jpg", size=(200, 160))]}
    groups = [["thumb", "orig"]]
    suggested = [suggested_keeper(g, files) for g in groups]
    rows = drop_rows(groups, files, suggested)
    assert {r["drop_path"]: r["reason"] for r in rows} == {
        "copies/orig-copy.jpg": "the same bytes as the kept file",
        "a/thumb.jpg": "fewer pixels (200x160 against 1000x800)"}
    assert {r["keep_path"] for r in rows} == {"a/orig.jpg"} and rows[0]["kept_by"] == "rule"
    chosen = drop_rows(groups, files, suggested, chosen={"thumb"})
    assert {r["drop_path"] for r in chosen} == {"a/orig.jpg", "copies/orig-copy.jpg"}
    assert {r["kept_by"] for r in chosen} == {"person"}
    assert keeper_of(groups[0], suggested[0], chosen={"elsewhere"}) == ("orig", "rule")


def test_between_lists_the_files_of_b_that_duplicate_a_by_folder_or_by_tag():
    files = {"cat": [file("cat", "train/cat.jpg")], "cat-crop": [file("cat-crop", "test/cat.jpg")],
             "dog": [file("dog", "train/dog.jpg"), file("dog", "test/dog-copy.jpg")],  # same bytes
             "owl": [file("owl", "test/owl.jpg")], "bee": [file("bee", "train/bee.jpg")],
             "bee-2": [file("bee-2", "train/bee-2.jpg")]}
    groups = [["cat", "cat-crop"], ["bee", "bee-2"]]
    in_train = lambda f: f.path.startswith("train/")  # noqa: E731
    in_test = lambda f: f.path.startswith("test/")  # noqa: E731
    rows = between_rows(groups, files, in_train, in_test)
    assert {(r["drop_path"], r["keep_path"], r["reason"]) for r in rows} == {
        ("test/cat.jpg", "train/cat.jpg", "a near-duplicate"),
        ("test/dog-copy.jpg", "train/dog.jpg", "the same bytes")}
    tagged_a, tagged_b = {"cat", "owl"}, {"cat-crop", "owl"}  # owl carries both tags
    rows = between_rows(groups, files, lambda f: f.id in tagged_a, lambda f: f.id in tagged_b)
    assert {(r["drop_path"], r["reason"]) for r in rows} == {
        ("test/cat.jpg", "a near-duplicate"), ("test/owl.jpg", "in both parts")}
    assert between_rows(groups, files, in_test, in_train)[0]["drop_path"] in {
        "train/cat.jpg", "train/dog.jpg"}
