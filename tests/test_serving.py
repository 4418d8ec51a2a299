"""The search service over a collection the pipeline materialized (the demo corpus), through
HTTP: searches, images, errors, metrics, pinning, and a hot swap under load."""

import io
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from serving.app import app_for_home, create_app
from serving.holder import IndexHolder
from vsearch_pipeline.core.demo import build_demo_corpus
from vsearch_pipeline.core.store import CurationDB
from vsearch_pipeline.runner import run_pipeline
from vsearch_pipeline.settings import load_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("serving")
    images, grounding = build_demo_corpus(root / "demo")
    home = root / "home"
    settings = load_settings(home, {"source": {"uri": str(images)},
                                    "index": {"index_type": "hnsw"},
                                    "clusters": {"min_cluster_size": 3},
                                    "evaluation": {"grounding_sets": [str(grounding)]},
                                    "serving": {"refresh_interval_s": 3600}})
    run_pipeline(home, settings, say=print)
    return {"home": home, "images": images, "settings": settings}


@pytest.fixture(scope="module")
def client(collection: dict):
    with TestClient(app_for_home(collection["home"], collection["settings"])) as client:
        yield client


def _id_of(client: TestClient, images: Path, path: str) -> str:
    data = (images / path).read_bytes()
    found = client.post("/search", files={"file": ("q.jpg", data)}, data={"k": "1"}).json()
    assert found["results"][0]["path"] == path
    return found["results"][0]["id"]


def test_health_names_the_live_version(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["vectors"] == 102
    assert health["index_version"] and health["pinned"] is None


def test_search_by_upload_returns_the_photo_and_its_edits(client, collection):
    data = (collection["images"] / "rocket" / "flip.jpg").read_bytes()
    answer = client.post("/search", files={"file": ("q.jpg", data, "image/jpeg")},
                         data={"k": "6"}).json()
    paths = [r["path"] for r in answer["results"]]
    assert paths[0] == "rocket/flip.jpg"
    assert all(p.startswith("rocket/") for p in paths)
    assert [r["rank"] for r in answer["results"]] == [1, 2, 3, 4, 5, 6]
    first = answer["results"][0]
    assert first["image_url"] == f"/images/{first['id']}" and first["score"] > 0.99
    assert answer["latency_ms"] > 0 and answer["k"] == 6


def test_crop_search_finds_the_cropped_photo(client, collection):
    photo = collection["images"] / "astronaut" / "original.png"
    w, h = Image.open(photo).size
    answer = client.post("/search", files={"file": ("a.png", photo.read_bytes())},
                         data={"bbox": f"{w // 10},{h // 10},{w - w // 10},{h - h // 10}",
                               "k": "3"}).json()
    assert answer["results"][0]["path"] == "astronaut/crop.jpg"


def test_similar_leaves_the_query_out(client, collection):
    image_id = _id_of(client, collection["images"], "coffee/original.png")
    answer = client.get(f"/similar/{image_id}", params={"k": 5}).json()
    assert image_id not in [r["id"] for r in answer["results"]]
    assert all(r["path"].startswith("coffee/") for r in answer["results"])


@pytest.mark.parametrize(("request_args", "status", "message"), [
    ({"files": {"file": ("x.jpg", b"<html>not an image</html>")}}, 400, "not a usable image"),
    ({"files": {"file": ("x.jpg", b"")}}, 400, "empty"),
    ({"files": {"file": ("x.jpg", b"\xff\xd8\xff\xe0" + b"\0" * 64)}}, 400, "not a usable image"),
    ({"data": {"k": "0"}}, 422, "k must be between 1 and 1000"),
    ({"data": {"k": "5000"}}, 422, "k must be between 1 and 1000"),
    ({"data": {"bbox": "10,10,5,5"}}, 422, "empty or outside"),
    ({"data": {"bbox": "0,0,99999,20"}}, 422, "empty or outside"),
    ({"data": {"bbox": "1,2,3"}}, 422, "four numbers"),
])
def test_bad_search_requests_get_a_clear_4xx(client, collection, request_args, status, message):
    photo = (collection["images"] / "coins" / "original.png").read_bytes()
    kwargs = {"files": {"file": ("c.png", photo)}, **request_args}
    answer = client.post("/search", **kwargs)
    assert answer.status_code == status
    assert message in answer.json()["detail"]


def test_upload_over_the_limit_is_refused(collection):
    settings = collection["settings"].serving.model_copy(update={"max_upload_bytes": 1000})
    with TestClient(app_for_home(collection["home"], collection["settings"].model_copy(
            update={"serving": settings}))) as client:
        answer = client.post("/search", files={"file": ("x", b"x" * 2000)})
        assert answer.status_code == 413 and "over 1000 bytes" in answer.json()["detail"]


def test_unknown_ids_are_404(client):
    assert client.get("/similar/ffffffffffffffff").status_code == 404
    assert client.get("/images/ffffffffffffffff").status_code == 404
    for attempt in ("../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd"):
        assert client.get(f"/images/{attempt}").status_code == 404


def test_images_and_thumbnails_come_from_the_collection(client, collection):
    image_id = _id_of(client, collection["images"], "chelsea/original.png")
    original = client.get(f"/images/{image_id}")
    assert original.status_code == 200 and original.headers["content-type"] == "image/png"
    assert original.content == (collection["images"] / "chelsea" / "original.png").read_bytes()
    thumb = client.get(f"/images/{image_id}/thumbnail", params={"size": 64})
    assert thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 64


def test_metrics_count_requests_and_describe_the_index(client):
    client.get("/health")
    text = client.get("/metrics").text
    assert 'vsearch_requests_total{endpoint="/health",status="200"}' in text
    assert "vsearch_request_seconds_bucket" in text
    assert "vsearch_index_vectors 102.0" in text
    assert 'vsearch_index_info{index_type="hnsw"' in text


def test_hot_swap_under_load_drops_nothing_and_pins_roll_back(collection):
    """A new index materialized while requests run is picked up by the watcher and swapped in
    with zero failed requests; pinning the old version rolls back, unpinning goes forward."""
    import time

    settings = collection["settings"]
    watching = settings.model_copy(update={"serving": settings.serving.model_copy(
        update={"refresh_interval_s": 0.5})})
    with TestClient(app_for_home(collection["home"], watching)) as client:
        old = client.get("/health").json()["index_version"]
        image_id = _id_of(client, collection["images"], "moon/original.png")
        statuses, versions, stop = [], set(), threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                answer = client.get(f"/similar/{image_id}", params={"k": 5})
                statuses.append(answer.status_code)
                versions.add(answer.json().get("index_version"))

        workers = [threading.Thread(target=hammer) for _ in range(2)]
        for worker in workers:
            worker.start()
        flat = settings.model_copy(update={"index": settings.index.model_copy(
            update={"index_type": "flat"})})
        run_pipeline(collection["home"], flat, say=print)
        deadline = time.monotonic() + 60
        while client.get("/health").json()["index_version"] == old and time.monotonic() < deadline:
            time.sleep(0.2)
        new = client.get("/health").json()["index_version"]
        time.sleep(1)  # requests keep running on the new index
        pinned = client.put("/index/pin", params={"version": old}).json()
        time.sleep(1)
        unpinned = client.delete("/index/pin").json()
        stop.set()
        for worker in workers:
            worker.join()
    assert new != old
    assert pinned["index_version"] == old and pinned["pinned"] == old
    assert unpinned["index_version"] == new and unpinned["pinned"] is None
    assert versions == {old, new}
    assert len(statuses) > 20 and set(statuses) == {200}


def test_an_index_that_does_not_load_is_refused_and_the_old_one_serves(collection):
    from serving.holder import instance_metadata_source
    from vsearch_pipeline.core.storage import ArtifactStore
    from vsearch_pipeline.runner import open_instance

    latest = instance_metadata_source(open_instance(collection["home"]))
    broken = {"serve": False}

    def source(version):
        metadata = dict(latest(version))
        if broken["serve"]:
            metadata |= {"version": "broken-1", "index_dir": "index/nowhere/broken-1"}
        return metadata

    holder = IndexHolder(source, lambda m: ArtifactStore(str(collection["home"] / "artifacts")))
    curation = CurationDB(str(collection["home"] / "curation.duckdb"))
    with TestClient(create_app(holder, collection["settings"].serving, curation)) as client:
        before = client.get("/health").json()["index_version"]
        broken["serve"] = True
        assert holder.refresh() is False
        health = client.get("/health").json()
        assert health["index_version"] == before
        assert "broken-1 refused" in health["last_error"]
        assert client.get("/similar/ffffffffffffffff").status_code == 404  # still answering
        assert client.put("/index/pin", params={"version": "no-such-version"}).status_code == 404


def test_tags_apply_filter_persist_and_refuse_bad_input(collection):
    images = collection["images"]
    with TestClient(app_for_home(collection["home"], collection["settings"])) as client:
        coffee = [_id_of(client, images, f"coffee/{n}") for n in ("original.png", "flip.jpg")]
        moon = _id_of(client, images, "moon/original.png")
        added = client.post("/tags", json={"ids": [*coffee, coffee[0]], "tag": "drinks"}).json()
        assert added == {"tag": "drinks", "added": 2}
        assert client.post("/tags", json={"ids": coffee, "tag": "drinks"}).json()["added"] == 0
        # A filtered search returns only tagged images, however far they are from the query.
        far = client.get(f"/similar/{moon}", params={"k": 10, "tag": "drinks"}).json()
        assert {r["id"] for r in far["results"]} == set(coffee)
        upload = client.post("/search", files={"file": ("m.png", (images / "moon" / "original.png")
                                                        .read_bytes())},
                             data={"k": "5", "tag": "drinks"}).json()
        assert {r["id"] for r in upload["results"]} == set(coffee)
        assert client.get(f"/similar/{moon}", params={"tag": "nope"}).status_code == 404
        assert client.post("/tags", json={"ids": ["ffffffffffffffff"], "tag": "x"}
                           ).status_code == 404
        assert client.post("/tags", json={"ids": coffee, "tag": "  "}).status_code == 422
        assert client.post("/tags", json={"ids": [], "tag": "x"}).status_code == 422
        injection = "x'); DROP TABLE tags; --"
        assert client.post("/tags", json={"ids": [moon], "tag": injection}).status_code == 200
    with TestClient(app_for_home(collection["home"], collection["settings"])) as client:
        tags = {t["tag"]: t["count"] for t in client.get("/tags").json()["tags"]}
        assert tags == {"drinks": 2, injection: 1}  # survived a restart, and the table too
        removed = client.request("DELETE", "/tags", json={"ids": [coffee[0]], "tag": "drinks"})
        assert removed.json() == {"tag": "drinks", "removed": 1}
        assert client.request("DELETE", "/tags", json={"ids": coffee, "tag": "zzz"}
                              ).status_code == 404
