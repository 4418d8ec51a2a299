"""The projection head as the pipeline runs it: selected by `retrieval.projection_head`, trained by
its asset on the collection's photos, versioned, and applied by the transform at index and at
query time; a photo that no longer decodes is left out of training, not fatal."""

import shutil
from pathlib import Path

import duckdb
import pytest
from dagster import AssetKey

from vsearch_pipeline.core.artifacts import latest_head, latest_transform, load_embeddings
from vsearch_pipeline.core.catalog import latest_index, load_index
from vsearch_pipeline.core.model_spec import DEFAULT_MODEL, ModelSpec
from vsearch_pipeline.definitions import make_definitions
from vsearch_pipeline.runner import open_instance, run_pipeline
from vsearch_pipeline.settings import load_settings

pytestmark = pytest.mark.slow

CLASSES = ["octopus", "pagoda", "emu", "lotus"]
PER_CLASS = 25
HEAD_ASSETS = [AssetKey("projection_head"), AssetKey("retrieval_transform"),
               AssetKey("faiss_index"), AssetKey("evaluation")]


@pytest.fixture(scope="module")
def home(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("head")
    images, home = root / "images", root / "home"
    for name in CLASSES:
        for photo in sorted((shared_data / "caltech101" / name).iterdir())[:PER_CLASS]:
            (images / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, images / name / photo.name)
    grounding = root / "classes.csv"
    grounding.write_text("group,image\n" + "".join(
        f"{p.parent.name},{p.parent.name}/{p.name}\n" for p in sorted(images.glob("*/*.jpg"))))
    base = {"source": {"uri": str(images)}, "index": {"index_type": "flat"},
            "evaluation": {"grounding_sets": [str(grounding)], "ks": [1, 10]},
            "retrieval": {"projection_head": True}}
    run_pipeline(home, load_settings(home, base), say=print)
    return {"home": home, "images": images, "base": base}


def _store(home: Path):
    return make_definitions(home, load_settings(home)).resources["storage"].store


def _materialize(home: Path, overrides: dict, assets: list[AssetKey] = HEAD_ASSETS) -> None:
    defs = make_definitions(home, load_settings(home, overrides))
    defs.get_implicit_global_asset_job_def().execute_in_process(
        asset_selection=assets, instance=open_instance(home), raise_on_error=True)


def _loaded(store):
    """The newest index of the default model, as the search service finds and loads it."""
    return load_index(store, latest_index(store, ModelSpec(DEFAULT_MODEL).key))


def test_head_is_trained_versioned_and_used_at_index_and_query_time(home):
    store = _store(home["home"])
    loaded = _loaded(store)
    model_key = loaded.build["model_key"]
    head = latest_head(store, model_key)
    assert head["trained_on"] == len(CLASSES) * PER_CLASS and head["failed"] == 0
    assert head["loss"][-1] < head["loss"][0]  # NT-Xent fell while training
    transform = latest_transform(store, model_key)
    assert transform["settings"]["head_version"] == head["head_version"]
    assert loaded.transform.head is not None and loaded.transform.head.version == head["head_version"]
    ids, vectors, _ = load_embeddings(store, model_key)
    assert loaded.index.d == vectors.shape[1] + 256  # the raw vector beside the head's output
    # a query goes through the same head: each photo's own upload comes back first
    row_of = {image_id: row for row, image_id in enumerate(ids)}
    for position in range(0, len(loaded.ids), 10):
        query = loaded.transform.apply(vectors[row_of[loaded.ids[position]]])
        assert loaded.search(query, 1)[1][0][0] == position
    with duckdb.connect(str(home["home"] / "vsearch.duckdb"), read_only=True) as con:
        labels = {row[0] for row in con.execute(
            "SELECT DISTINCT retrieval FROM retrieval_metrics").fetchall()}
    assert any(label.endswith(f",head={head['head_version']}") for label in labels), labels


def test_head_is_kept_when_nothing_changed_and_can_be_turned_off(home):
    store = _store(home["home"])
    model_key = _loaded(store).build["model_key"]
    first = latest_head(store, model_key)
    _materialize(home["home"], home["base"])
    assert latest_head(store, model_key)["version"] == first["version"]  # kept, not retrained
    _materialize(home["home"], {**home["base"], "retrieval": {"projection_head": False}})
    loaded = _loaded(store)
    assert loaded.transform.head is None
    assert loaded.index.d == table_vectors_dim(store, model_key)


def test_a_photo_that_no_longer_decodes_is_left_out_of_training(home):
    store = _store(home["home"])
    model_key = _loaded(store).build["model_key"]
    before = latest_head(store, model_key)
    victim = sorted(home["images"].glob("emu/*.jpg"))[0]
    original = victim.read_bytes()
    victim.write_bytes(b"not an image any more")
    try:
        # a new sample size retrains; 100 is every photo, the one that no longer decodes too
        settings = {**home["base"], "retrieval": {"projection_head": True,
                                                  "projection_head_images": 100}}
        _materialize(home["home"], settings, [AssetKey("projection_head")])
    finally:
        victim.write_bytes(original)
    head = latest_head(store, model_key)
    assert head["settings"]["images"] == 100 and head["version"] != before["version"]
    assert (head["trained_on"], head["failed"]) == (len(CLASSES) * PER_CLASS - 1, 1)
    assert head["loss"][-1] < head["loss"][0]


def table_vectors_dim(store, model_key: str) -> int:
    return load_embeddings(store, model_key)[1].shape[1]
