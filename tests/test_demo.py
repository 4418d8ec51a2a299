"""The embedded demo corpus: offline, grounded, and stable across runs."""

from vsearch_pipeline.core.decode import probe_image
from vsearch_pipeline.core.demo import EDITS, HARD_EDITS, PHOTOS, build_demo_corpus
from vsearch_pipeline.core.grounding import parse_grounding


def test_demo_corpus_has_every_photo_and_edit_with_its_grounding(tmp_path):
    images, grounding = build_demo_corpus(tmp_path)
    assert grounding.stem == "demo"  # the name the evaluation shows
    parsed = parse_grounding("demo", grounding.read_text())
    rows = parsed.rows
    assert len(rows) == len(PHOTOS) * (1 + len(EDITS))
    assert {group for group, _ in rows} == set(PHOTOS)
    assert set(parsed.cases.values()) == {"original", *EDITS} and set(HARD_EDITS) <= set(EDITS)
    assert parsed.cases["chelsea/quarter.jpg"] == "quarter"
    for _, path in rows:
        info = probe_image((images / path).read_bytes())
        assert info.width > 50 and info.height > 50
    assert (images / "broken" / "truncated.jpg").exists()


def test_a_second_build_rewrites_nothing(tmp_path):
    images, _ = build_demo_corpus(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in images.rglob("*") if p.is_file()}
    build_demo_corpus(tmp_path)
    after = {p: p.stat().st_mtime_ns for p in images.rglob("*") if p.is_file()}
    assert after == before
