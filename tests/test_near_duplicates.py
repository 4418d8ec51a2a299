"""Near-duplicates by pHash and embedding contrast together (core.near_duplicates), on real copies.

Corpus: the 435 Caltech-101 Faces/Faces_easy crop pairs, the dedup_cases edited copies
(ukbench00120 with its _hflip, _resize and _rotation) and 400 other Caltech photos as
distractors, embedded with the project's model. The thresholds are chosen without labels on
half of the Faces pairs and half of the distractors, and judged on the other halves plus the
dedup_cases copies; pHash alone at the default 8 bits is measured on the same images.
"""

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import known_copies
from dagster import AssetKey
from PIL import Image

from vsearch_pipeline.core import near_duplicates
from vsearch_pipeline.core.catalog import latest_duplicates
from vsearch_pipeline.core.decode import ImageError, decode_rgb
from vsearch_pipeline.core.duplicate_groups import duplicates_rule
from vsearch_pipeline.core.embed import embed_files
from vsearch_pipeline.core.hashing import near_duplicate_pairs, phash64
from vsearch_pipeline.core.model_spec import ModelSpec
from vsearch_pipeline.core.models import load_model
from vsearch_pipeline.core.near_duplicates import (
    MIN_IMAGES_TO_CHOOSE,
    Thresholds,
    combined_near_duplicates,
    nearest_neighbours,
    reference_copy_groups,
    score_pairs,
    truth_pairs,
)
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.runner import open_instance, run_pipeline
from vsearch_pipeline.settings import SettingsError, load_settings

HAMMING = 8  # the default near_duplicates.hamming_threshold
DISTRACTORS = 400
KNOWN_FOLDERS = ("/Faces/", "/Faces_easy/", "/mixed_images/")


def _in_scope(path: str) -> bool:
    """Images whose copies are all known: precision is judged on pairs touching them."""
    return any(folder in path for folder in KNOWN_FOLDERS)


@pytest.fixture(scope="session")
def corpus(shared_data: Path, cases: Path) -> dict:
    """Paths (relative to the data root), unit vectors and pHashes of every decodable image."""
    drawn = known_copies(shared_data, cases, DISTRACTORS)
    distractors = drawn.distractors
    paths = [f"caltech101/{side}/{n}" for n in drawn.faces for side in ("Faces", "Faces_easy")]
    paths += distractors + drawn.edits
    # the view the pipeline's near-duplicate step reads, whatever the search view is
    model = load_model(ModelSpec("efficientnet-lite0").copy_spec, engine="auto")
    embedded = embed_files(model, paths, paths, lambda p: (shared_data / p).read_bytes())
    hashes = np.array([_phash(shared_data / p) for p in embedded.ids], dtype=np.uint64)
    return {"paths": embedded.ids, "vectors": embedded.vectors, "hashes": hashes,
            "fit_faces": set(drawn.halves[0::2]), "distractors": distractors}


def _phash(path: Path) -> int:
    try:
        return phash64(decode_rgb(path.read_bytes(), min_size=64))
    except (ImageError, OSError):
        raise AssertionError(f"{path} embedded but does not hash") from None


def _part(corpus: dict, fit: bool) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The fit part (half the Faces pairs, half the distractors) or the held-out rest (the
    other halves and the dedup_cases copies)."""
    half = set(corpus["distractors"][: DISTRACTORS // 2])
    keep = [i for i, p in enumerate(corpus["paths"])
            if ("/Faces" in p and (p.rsplit("/", 1)[1] in corpus["fit_faces"]) == fit)
            or (p in corpus["distractors"] and (p in half) == fit)
            or ("/mixed_images/" in p and not fit)]
    return [corpus["paths"][i] for i in keep], corpus["vectors"][keep], corpus["hashes"][keep]


def _named(paths: list[str], pairs: np.ndarray) -> list[tuple[str, str]]:
    return [(paths[i], paths[j]) for i, j in pairs[:, :2]]


@pytest.fixture(scope="session")
def held_out(corpus: dict) -> dict:
    """Thresholds chosen on the fit part; both methods run and scored on the held-out part."""
    fit_paths, fit_vectors, fit_hashes = _part(corpus, fit=True)
    chosen = combined_near_duplicates(fit_hashes, fit_vectors, hamming_threshold=HAMMING).thresholds
    paths, vectors, hashes = _part(corpus, fit=False)
    combined = combined_near_duplicates(hashes, vectors, hamming_threshold=HAMMING, thresholds=chosen)
    phash = near_duplicate_pairs(hashes, HAMMING)
    truth = truth_pairs(reference_copy_groups(paths))
    edits = {p for p in truth if "/mixed_images/" in p[0]}
    scores = {}
    for name, pairs in (("phash", _named(paths, phash)), ("combined", _named(paths, combined.pairs))):
        scores[name] = {"faces": score_pairs(pairs, truth - edits, lambda p: "/Faces" in p),
                        "edits": score_pairs(pairs, edits, lambda p: "/mixed_images/" in p),
                        "all": score_pairs(pairs, truth, _in_scope)}
        print(name, {k: {m: round(v, 3) for m, v in s.as_dict().items()} for k, s in scores[name].items()})
    print("chosen on the fit part:", chosen)
    rechosen = combined_near_duplicates(hashes, vectors, hamming_threshold=HAMMING).thresholds
    print("chosen on the held-out part:", rechosen)
    return {"scores": scores, "chosen": chosen, "rechosen": rechosen, "truth": truth}


def test_combined_finds_far_more_copies_than_phash_alone(held_out):
    phash, combined = held_out["scores"]["phash"], held_out["scores"]["combined"]
    # Measured: pHash alone finds 3 of the 223 held-out pairs (recall 0.013, precision 0.15);
    # the combined rule 9 (recall 0.040, precision 0.69); on the Faces crops 6 against 2. (With
    # the centre crop's own pass as the copy view, before one pass gave both views: 16 pairs,
    # precision 0.84; issue 22 is to find crops from regions of the one feature map.)
    assert combined["all"].true_found >= 2.5 * max(phash["all"].true_found, 1)
    assert combined["faces"].true_found >= 2.5 * max(phash["faces"].true_found, 1)
    assert combined["all"].precision >= max(phash["all"].precision + 0.3, 0.6)


def test_flips_rotations_and_resizes_are_found(held_out):
    phash, combined = held_out["scores"]["phash"], held_out["scores"]["combined"]
    # Measured: pHash alone pairs only the resize with its original (1 of 6 pairs); the
    # combined rule the 3 pairs of the original, its mirror and its resize, and pairs no
    # distractor with them. The copy turned by about 20 degrees, a sixth of it black corners,
    # is missed (cosine 0.68 to its original in the squashed map's centre; 0.82 in a centre
    # crop's pass): the case issue 22's region matching is to find.
    assert phash["edits"].true_found <= 1
    assert combined["edits"].true_found >= 3
    assert combined["edits"].precision >= 0.8


def test_thresholds_are_chosen_from_the_data_and_say_how(held_out):
    chosen, rechosen = held_out["chosen"], held_out["rechosen"]
    assert "Otsu" in chosen.chosen_by and "n=" in chosen.chosen_by
    assert 0.0 < chosen.contrast < 0.3 and 0.5 < chosen.cosine_floor < 0.95
    # two disjoint halves of the same kind of collection give about the same thresholds
    assert abs(chosen.contrast - rechosen.contrast) < 0.03
    assert abs(chosen.cosine_floor - rechosen.cosine_floor) < 0.05
    assert chosen.strict_bits == HAMMING // 2


# --- the core functions on synthetic data --------------------------------------------------------

def _planted(n: int = 300, copies: int = 30, dim: int = 64, seed: int = 0):
    """Random unit vectors and random pHashes, with `copies` noisy copies of the first items."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, dim)).astype(np.float32)
    noisy = base[:copies] + 0.25 * rng.standard_normal((copies, dim)).astype(np.float32)
    vectors = np.concatenate([base, noisy])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    hashes = rng.integers(0, 2**63, n + copies, dtype=np.uint64)
    truth = {(i, n + i) for i in range(copies)}
    return vectors, hashes, truth


def test_planted_copies_are_found_with_thresholds_from_the_data():
    vectors, hashes, truth = _planted()
    result = combined_near_duplicates(hashes, vectors)
    found = {tuple(p) for p in result.pairs.tolist()}
    assert len(found & truth) >= 0.9 * len(truth)
    assert len(found - truth) <= 3
    assert result.thresholds is not None and result.by_contrast == len(result.pairs)


def test_images_without_vectors_fall_back_to_phash_alone():
    vectors, hashes, truth = _planted()
    hashes[-1] = hashes[0] ^ np.uint64(0b111)  # 3 bits from item 0; the last item has no vector
    hashes[5] = hashes[6]  # identical pHashes, both with vectors that are unrelated
    positions = np.arange(len(vectors) - 1)
    result = combined_near_duplicates(hashes, vectors[:-1], positions, hamming_threshold=4)
    found = {tuple(p) for p in result.pairs.tolist()}
    assert (0, len(vectors) - 1) in found  # pHash alone decides where a vector is missing
    assert (5, 6) not in found  # identical pHashes, but the embeddings disagree: below the floor


def test_too_few_images_to_choose_means_phash_alone_unless_thresholds_are_set():
    vectors, hashes, _ = _planted(n=MIN_IMAGES_TO_CHOOSE - 5, copies=2)
    hashes[3] = hashes[4]
    result = combined_near_duplicates(hashes, vectors)
    assert result.thresholds is None
    assert {tuple(p) for p in result.pairs.tolist()} == {(3, 4)}
    fixed = combined_near_duplicates(hashes, vectors, contrast_threshold=0.2, cosine_floor=0.8)
    assert fixed.thresholds.chosen_by == "settings"
    assert (0, len(vectors) - 2) in {tuple(p) for p in fixed.pairs.tolist()}


def test_a_collection_of_identical_copies_is_one_group_by_phash():
    vectors = np.ones((MIN_IMAGES_TO_CHOOSE + 5, 8), dtype=np.float32) / np.sqrt(8)
    hashes = np.full(len(vectors), 12345, dtype=np.uint64)
    result = combined_near_duplicates(hashes, vectors)
    assert result.thresholds is None  # nothing to split: every image looks alike
    assert len(result.pairs) == len(vectors) * (len(vectors) - 1) // 2


def test_given_thresholds_win_and_decide_alone():
    vectors, hashes, truth = _planted()
    strict = Thresholds(contrast=1.5, cosine_floor=0.99, strict_bits=0, chosen_by="test")
    assert len(combined_near_duplicates(hashes, vectors, thresholds=strict).pairs) == 0


def test_nearest_neighbours_never_return_the_image_itself():
    vectors = np.repeat(np.eye(4, dtype=np.float32), 3, axis=0)  # triplets of identical vectors
    cosine, rows = nearest_neighbours(vectors, 3)
    assert not (rows == np.arange(len(vectors))[:, None]).any()
    assert np.allclose(cosine[:, :2], 1.0) and np.allclose(cosine[:, 2], 0.0)
    assert nearest_neighbours(vectors[:1], 5)[1].shape == (1, 0)


def test_large_collections_take_neighbours_from_an_inverted_file_with_measured_recall(monkeypatch):
    """Above EXACT_NEIGHBOURS_MAX vectors the neighbours are approximate (IVF): the planted copies
    are still the pairs found, and the recall against exact search is measured and reported."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 48)).astype(np.float32)
    base = centres[rng.integers(0, 40, 4000)] + 0.6 * rng.standard_normal((4000, 48)).astype(np.float32)
    noisy = base[:100] + 0.1 * rng.standard_normal((100, 48)).astype(np.float32)
    vectors = np.concatenate([base, noisy])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    hashes = rng.integers(0, 2**63, len(vectors), dtype=np.uint64)
    truth = {(i, 4000 + i) for i in range(100)}
    exact = combined_near_duplicates(hashes, vectors)
    monkeypatch.setattr(near_duplicates, "EXACT_NEIGHBOURS_MAX", 1000)
    monkeypatch.setattr(near_duplicates, "NEIGHBOUR_PROBES", 4)  # so that some are missed
    approximate = combined_near_duplicates(hashes, vectors, thresholds=exact.thresholds)
    assert exact.neighbour_recall == 1.0
    assert 0.6 <= approximate.neighbour_recall < 1.0
    found = {tuple(p) for p in approximate.pairs.tolist()}
    assert len(found & truth) >= 0.95 * len({tuple(p) for p in exact.pairs.tolist()} & truth) > 90


def test_scores_judge_precision_only_on_pairs_touching_known_images():
    truth = truth_pairs([["a", "b", "c"]])
    assert truth == {("a", "b"), ("a", "c"), ("b", "c")}
    scores = score_pairs([("b", "a"), ("a", "x"), ("x", "y")], truth, lambda i: i in "abc")
    assert scores.predicted_in_scope == 2 and scores.true_found == 1
    assert scores.precision == 0.5 and scores.recall == pytest.approx(1 / 3)


def test_reference_copy_groups_name_crops_and_edits():
    paths = ["c/Faces/image_0001.jpg", "c/Faces_easy/image_0001.jpg", "c/Faces/image_0002.jpg",
             "d/mixed_images/u1.jpg", "d/mixed_images/u1_hflip.jpg", "d/mixed_images/u1_rotation.jpg",
             "d/mixed_images/u2.jpg", "d/mixed_images/u2_corrupt.jpg", "c/cup/image_0001.jpg"]
    assert sorted(reference_copy_groups(paths)) == [
        ["c/Faces/image_0001.jpg", "c/Faces_easy/image_0001.jpg"],
        ["d/mixed_images/u1.jpg", "d/mixed_images/u1_hflip.jpg", "d/mixed_images/u1_rotation.jpg"]]


def test_method_setting_is_validated(tmp_path):
    assert load_settings(tmp_path).near_duplicates.method == "combined"
    with pytest.raises(SettingsError, match="near_duplicates.method must be one of combined, phash"):
        load_settings(tmp_path, {"near_duplicates": {"method": "pash"}})


# --- the asset ---------------------------------------------------------------------------------

@pytest.mark.slow
def _latest_metadata(home: Path) -> dict:
    """What the latest near_duplicate_groups materialization told people (Dagster metadata)."""
    event = open_instance(home).get_latest_materialization_event(AssetKey("near_duplicate_groups"))
    return event.asset_materialization.metadata


def metadata_value(metadata: dict, key: str):
    return metadata[key].value


def test_asset_groups_edited_copies_and_records_its_thresholds(shared_data, cases, tmp_path):
    images, home = tmp_path / "images", tmp_path / "home"
    shutil.copytree(cases / "mixed_images", images / "ukbench")
    for name in ("cup", "pizza", "airplanes", "Faces", "Faces_easy"):
        (images / name).mkdir(parents=True)
        for photo in sorted((shared_data / "caltech101" / name).glob("*.jpg"))[:12]:
            shutil.copy(photo, images / name / photo.name)
    # search on the whole view: the groups must still come from the copy view (centre region)
    settings = load_settings(home, {"source": {"uri": str(images)}, "model": {"view": "whole"}})
    assert run_pipeline(home, settings, say=print)["success"]

    metadata = _latest_metadata(home)
    assert metadata_value(metadata, "method") == "combined"
    assert "Otsu" in metadata_value(metadata, "threshold_choice")
    assert metadata_value(metadata, "hamming_threshold") == HAMMING
    store = ArtifactStore(str(home / "artifacts"))  # what the service folds by: the file's record
    rule = duplicates_rule(store.read_parquet(latest_duplicates(store)))
    assert rule["method"] == "combined" and rule["hamming_threshold"] == HAMMING
    assert round(rule["thresholds"]["contrast"], 4) == metadata_value(metadata, "contrast_threshold")
    # search embeds the whole image; copies are found in centre-region vectors, pooled beside
    spec = ModelSpec("efficientnet-lite0", view="whole")
    assert metadata_value(metadata, "model") == spec.copy_spec.key == "efficientnet-lite0-centre_region-int8"
    shards = {key: pq.read_table(home / "artifacts" / "embeddings" / key / "b00001.parquet")
              for key in (spec.key, spec.copy_spec.key)}
    assert [sorted(t.column("id").to_pylist()) for t in shards.values()].count(
        sorted(shards[spec.key].column("id").to_pylist())) == 2
    table = pq.read_table(home / "artifacts" / metadata_value(metadata, "artifact"))
    group = dict(zip(table.column("id").to_pylist(), table.column("group").to_pylist(), strict=True))
    with duckdb.connect(str(home / "vsearch.duckdb"), read_only=True) as con:
        recorded = dict(con.execute(
            "SELECT metric, value FROM hash_metrics WHERE asset = 'near_duplicate_groups' "
            "AND method = 'combined'").fetchall())
        where = dict(con.execute("SELECT path, id FROM read_parquet(?)",
                                 [str(home / "artifacts" / "manifest" / "*.parquet")]).fetchall())
    assert recorded["contrast_threshold"] == pytest.approx(metadata_value(metadata, "contrast_threshold"))
    assert recorded["with_vectors"] == recorded["images"] == len(group)
    copies = {group[where[f"ukbench/ukbench00120{edit}.jpg"]]
              for edit in ("", "_hflip", "_resize")}  # the rotation: see the test above
    assert len(copies) == 1 and copies != {-1}
    # the crops: Faces_easy/X is a tight crop of Faces/X, found by core.partial_copies
    crops = [(group[where[f"Faces/{n}"]], group[where[f"Faces_easy/{n}"]])
             for n in sorted(p.rsplit("/", 1)[1] for p in where if p.startswith("Faces/"))]
    assert sum(a == b != -1 for a, b in crops) >= len(crops) - 1, crops
    assert recorded["partial_copies"] >= len(crops) - 1
    assert rule["partial_copies"]["checks_per_image"] == settings.near_duplicates.partial_copy_checks

    # a new crop: found against its original; only pairs no earlier run checked are read again
    with Image.open(images / "pizza" / "image_0001.jpg") as photo:
        w, h = photo.size
        photo.crop((w // 4, h // 4, w - w // 8, h - h // 8)).save(images / "pizza" / "crop.jpg")
    assert run_pipeline(home, settings, say=print)["success"]
    metadata = _latest_metadata(home)
    table = pq.read_table(home / "artifacts" / metadata_value(metadata, "artifact"))
    group = dict(zip(table.column("id").to_pylist(), table.column("group").to_pylist(), strict=True))
    with duckdb.connect(str(home / "vsearch.duckdb"), read_only=True) as con:
        where = dict(con.execute("SELECT path, id FROM read_parquet(?)",
                                 [str(home / "artifacts" / "manifest" / "*.parquet")]).fetchall())
    assert group[where["pizza/crop.jpg"]] == group[where["pizza/image_0001.jpg"]] != -1
    checked_now = metadata_value(metadata, "partial_copy_checked_now")
    assert 0 < checked_now < metadata_value(metadata, "partial_copy_candidates") / 2

    # method: phash groups by pHash alone, in full first (the last groups came from another
    # rule), then checking only new hashes
    phash = load_settings(home, {"source": {"uri": str(images)},
                                 "near_duplicates": {"method": "phash"}})
    for expected_mode in ("full", "incremental"):
        run_pipeline(home, phash, say=print)
        metadata = _latest_metadata(home)
        assert metadata_value(metadata, "method") == "phash"
        assert metadata_value(metadata, "mode") == expected_mode


def test_tight_groups_stop_chains_but_keep_what_the_pixels_saw():
    """Twelve views along an arc, each a near pair of the next (cosine 0.99): linked one to the
    next they would be one group from one end to the other (cosine 0.22 between the ends)."""
    from vsearch_pipeline.core.hashing import group_labels
    from vsearch_pipeline.core.near_duplicates import tight_groups

    angles = np.radians(np.arange(12) * 8.0)
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    chain = np.array([(i, i + 1) for i in range(11)])
    assert len(set(group_labels(12, chain))) == 1
    labels = tight_groups(12, chain, np.empty((0, 2)), vectors, np.arange(12), floor=0.95)
    sizes = np.bincount(labels[labels >= 0])
    assert len(sizes) > 1 and sizes.max() <= 5  # a group spans no more than the floor allows
    for group in set(labels.tolist()) - {-1}:  # each group a stretch of the arc
        members = np.flatnonzero(labels == group)
        assert members.max() - members.min() + 1 == len(members)
    far = tight_groups(12, chain, np.array([[0, 11]]), vectors, np.arange(12), floor=0.95)
    assert far[0] == far[11]  # seen in the pixels: joined however far apart the vectors are
    free = tight_groups(13, np.array([[11, 12]]), np.empty((0, 2)), vectors, np.arange(12), 0.95)
    assert free[11] == free[12]  # no vector for item 12: nothing to judge it by
