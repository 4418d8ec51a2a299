"""The embedding step: the decode-ahead queue keeps memory bounded and order intact, and each
model view embeds only the images it lacks."""

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from vsearch_pipeline.core.embed import bounded_map, embed_files, embeddings_table, table_vectors
from vsearch_pipeline.core.embedding_cache import embed_missing, view_shards
from vsearch_pipeline.core.layout import embeddings_path
from vsearch_pipeline.core.model_spec import DEFAULT_MODEL, ModelSpec
from vsearch_pipeline.core.models import load_model
from vsearch_pipeline.core.sources import read_object
from vsearch_pipeline.core.storage import ArtifactStore


def test_bounded_map_keeps_order_and_never_runs_far_ahead():
    started = []
    lock = threading.Lock()

    def work(item: int) -> int:
        with lock:
            started.append(item)
        return item * item

    consumed = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for value in bounded_map(pool, work, range(100), ahead=5):
            with lock:
                # Never more than `ahead` items submitted beyond what was consumed.
                assert len(started) <= len(consumed) + 5
            consumed.append(value)
    assert consumed == [i * i for i in range(100)]


def test_bounded_map_handles_fewer_items_than_ahead():
    with ThreadPoolExecutor(max_workers=2) as pool:
        assert list(bounded_map(pool, str, [1, 2], ahead=10)) == ["1", "2"]


def test_each_view_embeds_only_the_images_it_lacks(tmp_path: Path, cases: Path) -> None:
    """The embeddings step with the whole view for search and the centre region for copies, when
    the centre region already holds some images (as after switching `model.view`): those are
    embedded in the whole view alone, the rest in both views from one decode and one network
    pass, nothing twice."""
    store = ArtifactStore(str(tmp_path))
    spec = ModelSpec(DEFAULT_MODEL, view="whole")
    files = sorted((cases / "mixed_images").iterdir())
    ids, uris = [f.name for f in files], [str(f) for f in files]
    models = {key: load_model(s) for key, s in ((spec.key, spec), (spec.copy_spec.key,
                                                                     spec.copy_spec))}
    assert spec.copy_spec.view == "centre_region"
    assert models[spec.key].shares_pass(models[spec.copy_spec.key])
    crop = models[spec.copy_spec.key]
    earlier = embed_files(crop, ids[:2], uris[:2], read_object)
    store.write_parquet(embeddings_path(spec.copy_spec.key, "b00000"), embeddings_table(
        earlier.ids, earlier.vectors, crop.name, crop.version, earlier.labels))

    shards = view_shards(store, spec, ids)
    totals: list[int] = []
    reads: list[str] = []
    embedded, failed = embed_missing(shards, lambda s: models[s.key], ids, uris,
                                     lambda uri: reads.append(uri) or read_object(uri), 4,
                                     lambda done, total: totals.append(total))
    assert list(failed) == ["ukbench09268_corrupt.jpg"]
    assert sorted(set(totals)) == [2, len(ids) - 2]  # whole view alone, then both views
    assert sorted(reads) == sorted(uris)  # one read of each file for both views
    assert embedded == len(ids) - 1
    usable = sorted(set(ids) - set(failed))
    for key, shard in shards.items():
        table = shard.table()
        assert sorted(table.column("id").to_pylist()) == usable  # each image once per view
        assert {v.split("; view ")[1].split(";")[0]
                for v in table.column("model_version").to_pylist()} == (
            {"whole"} if key == spec.key else {"centre_region"})
    cached = shards[spec.copy_spec.key].table()
    np.testing.assert_array_equal(table_vectors(cached)[:2], earlier.vectors)
