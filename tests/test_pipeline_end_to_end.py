"""The whole graph, materialized in process on a slice of the shared photos, with real outcomes.

Corpus: 10 Caltech-101 classes, the 435 Faces/Faces_easy crop pairs, and the dedup_cases files
(edited copies, odd formats, a corrupt file), plus a truncated JPEG made here. Then a second
ingest adds one more class: a new partition, nothing old rewritten or embedded again.
"""

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from vsearch_pipeline.core.catalog import latest_index, load_index
from vsearch_pipeline.core.grounding import format_grounding, grounding_from_folders
from vsearch_pipeline.core.model_spec import DEFAULT_KEY
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.runner import open_instance, run_pipeline
from vsearch_pipeline.settings import load_settings

pytestmark = pytest.mark.slow

CLASSES = ["octopus", "mayfly", "mandolin", "pagoda", "emu", "pyramid", "chair", "lotus",
           "electric_guitar", "buddha"]
LATE_CLASS = "butterfly"


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)


@pytest.fixture(scope="module")
def run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("e2e")
    images, home = root / "images", root / "home"
    caltech = shared_data / "caltech101"
    for name in [*CLASSES, "Faces", "Faces_easy"]:
        _copy_tree(caltech / name, images / "caltech" / name)
    _copy_tree(shared_data / "dedup_cases", images / "dedup")
    good = (caltech / "emu" / sorted(p.name for p in (caltech / "emu").iterdir())[0]).read_bytes()
    (images / "dedup" / "truncated.jpg").write_bytes(good[: len(good) // 2])

    class_rows = grounding_from_folders(
        [f"caltech/{c}/{p.name}" for c in CLASSES for p in sorted((caltech / c).iterdir())], 2)
    faces = sorted(p.name for p in (caltech / "Faces_easy").iterdir())
    pair_rows = [(name, f"caltech/{folder}/{name}") for name in faces
                 for folder in ("Faces", "Faces_easy")]
    (root / "classes.csv").write_text(format_grounding(class_rows))
    (root / "faces_pairs.csv").write_text(format_grounding(pair_rows))
    settings = load_settings(home, {
        "source": {"uri": str(images)},
        "index": {"index_type": "hnsw"},
        "clusters": {"method": "hdbscan", "reduce": "pca", "min_cluster_size": 5},
        "evaluation": {"grounding_sets": [str(root / "classes.csv"),
                                          str(root / "faces_pairs.csv")]},
    })
    first = run_pipeline(home, settings, say=print)
    store = ArtifactStore(str(home / "artifacts"))
    before = {p: store.read_bytes(p) for p in store.list("manifest", ".parquet")}
    return {"root": root, "home": home, "images": images, "settings": settings,
            "first": first, "store": store, "manifest_bytes_before": before,
            "faces": faces, "caltech": caltech}


def _metrics(home: Path, table: str, where: str = "TRUE") -> dict:
    with duckdb.connect(str(home / "vsearch.duckdb"), read_only=True) as con:
        rows = con.execute(f"SELECT metric, value FROM {table} WHERE {where} "
                           "ORDER BY recorded_at").fetchall()
    return dict(rows)


def test_first_run_succeeds_with_one_partition(run):
    assert run["first"]["success"]
    assert run["first"]["batches"] == ["b00001"]


def test_manifest_records_bad_files_with_reasons(run):
    manifest = pq.read_table(run["home"] / "artifacts" / "manifest" / "b00001.parquet").to_pylist()
    by_path = {r["path"]: r for r in manifest}
    assert by_path["dedup/mixed_images/ukbench09268_corrupt.jpg"]["status"] == "not_image"
    assert by_path["dedup/truncated.jpg"]["status"] == "corrupt"
    assert "truncated" in by_path["dedup/truncated.jpg"]["reason"]
    assert by_path["dedup/formats_images/ukbench09380.webp"]["status"] == "ok"
    renamed = {by_path["dedup/mixed_images/ukbench00120.jpg"]["id"],
               by_path["dedup/mixed_nested_images/lvl1/ukbench00120.jpg"]["id"]}
    assert len(renamed) == 1
    ok = [r for r in manifest if r["status"] == "ok"]
    assert all(r["width"] > 0 and r["height"] > 0 and r["format"] for r in ok)


def test_retrieval_by_class_far_above_chance(run):
    figures = _metrics(run["home"], "retrieval_metrics", "grounding_set = 'classes'")
    print("classes:", {k: round(v, 3) for k, v in figures.items()})
    assert figures["queries"] > 500
    assert figures["precision@1"] > 0.8  # chance is about 0.1 with ten classes
    assert figures["map@10"] > 0.6


def test_faces_twins_are_neighbours_or_duplicates(run):
    home, store = run["home"], run["store"]
    loaded = load_index(store, latest_index(store, DEFAULT_KEY))
    paths = loaded.id_map.column("path").to_pylist()
    position = {p: i for i, p in enumerate(paths)}
    with duckdb.connect(str(home / "vsearch.duckdb"), read_only=True) as con:
        group = dict(con.execute("SELECT id, group_id FROM near_duplicate_groups").fetchall())
    ids = loaded.ids
    neighbour_hits = duplicate_hits = either = 0
    for name in run["faces"]:
        easy, face = position[f"caltech/Faces_easy/{name}"], position[f"caltech/Faces/{name}"]
        # the upload path: the model's vector, searched with the build's query plan
        top = loaded.search(loaded.plain_vectors(np.array([easy])), 6)[1][0]
        near = face in top[top != easy][:5]
        same = group.get(ids[easy], -1) >= 0 and group.get(ids[easy]) == group.get(ids[face])
        neighbour_hits += near
        duplicate_hits += same
        either += near or same
    n = len(run["faces"])
    print(f"Faces pairs: twin in top 5 {neighbour_hits / n:.3f}, same duplicate group "
          f"{duplicate_hits / n:.3f}, either {either / n:.3f}")
    # The twin competes with other shots of the same person in the same room, and pHash does not
    # survive the crop. Measured here: 0.453 with the default one-pass `regions` view (int8), where
    # `multi`'s aspect-kept second pass reached 0.55: the squashed map sees a tight crop less
    # like its original (raw, all Caltech: twin in top 5 0.50 against 0.65; docs/search-quality.md).
    # Finding crops from regions of the one map is issue 22's.
    assert either / n > 0.4


def test_clusters_and_checks_recorded(run):
    figures = _metrics(run["home"], "cluster_metrics", "grounding_set = 'classes'")
    assert 0.3 < figures["purity"] <= 1.0
    assert 0.0 <= figures["coverage"] <= 1.0
    assert figures["nmi"] > 0.3
    overall = _metrics(run["home"], "cluster_metrics", "grounding_set IS NULL")
    assert overall["n_clusters"] >= 5
    instance = open_instance(run["home"])
    from dagster import AssetCheckKey, AssetKey
    for asset, check in [("embeddings", "every_image_embedded"),
                         ("embeddings", "vectors_finite_and_unit"),
                         ("faiss_index", "recall_above_bound")]:
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [AssetCheckKey(AssetKey(asset), check)])
        evaluation = next(iter(record.values())).event.dagster_event.event_specific_data
        assert evaluation.passed, (asset, check)


def test_second_ingest_adds_a_partition_without_rewriting(run):
    _copy_tree(run["caltech"] / LATE_CLASS, run["images"] / "caltech" / LATE_CLASS)
    subset_before = pq.read_table(run["home"] / "artifacts" / "subset" / "b00001.parquet")
    second = run_pipeline(run["home"], run["settings"], say=print)
    assert second["new_batch"] == "b00002"
    store = run["store"]
    for path, data in run["manifest_bytes_before"].items():
        assert store.read_bytes(path) == data
    subset_after = pq.read_table(run["home"] / "artifacts" / "subset" / "b00001.parquet")
    assert subset_after.column("id").to_pylist() == subset_before.column("id").to_pylist()
    late = len(list((run["caltech"] / LATE_CLASS).iterdir()))
    embedded = _metrics(run["home"], "embedding_metrics", "partition = 'b00002'")
    assert embedded["embedded_now"] == late
    again = _metrics(run["home"], "embedding_metrics", "partition = 'b00001'")
    assert again["embedded_now"] == 0 and again["from_cache"] > 1000


def test_index_types_compare_by_sql(run):
    settings = run["settings"].model_copy(
        update={"index": run["settings"].index.model_copy(update={"index_type": "ivf-pq"})})
    assert run_pipeline(run["home"], settings, say=print)["success"]
    with duckdb.connect(str(run["home"] / "vsearch.duckdb"), read_only=True) as con:
        rows = dict(con.execute(
            "SELECT index_type, max(value) FROM retrieval_metrics "
            "WHERE grounding_set = 'classes' AND metric = 'map@10' GROUP BY index_type").fetchall())
    assert set(rows) == {"hnsw", "ivf-pq"}
    assert rows["ivf-pq"] > 0.4
