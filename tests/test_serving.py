"""The search service over a collection the pipeline materialized from the shared photos (four
Caltech-101 classes, the imagededup near-duplicate cases and a planted crop), through HTTP:
searches by upload, crop, id and text, folding, tags, clicks, ratings, clusters, duplicates,
embedding, errors, metrics, pinning, and a hot swap while tags and clicks are written."""

import io
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from serving.app import app_for_home, create_app
from serving.auth import create_key
from serving.holder import IndexHolder
from vsearch_pipeline.core.store import CurationDB
from vsearch_pipeline.runner import run_pipeline
from vsearch_pipeline.settings import load_settings

pytestmark = pytest.mark.slow

CLASSES = ("accordion", "airplanes", "butterfly", "camera")
PER_CLASS = 10
CROP_SOURCE = "accordion/image_0001.jpg"
CROP_BOX = (40, 30, 220, 200)


def build_collection(shared: Path, cases: Path, root: Path) -> Path:
    images = root / "images"
    for name in CLASSES:
        (images / name).mkdir(parents=True)
        for photo in sorted((shared / "caltech101" / name).glob("*.jpg"))[:PER_CLASS]:
            shutil.copy(photo, images / name / photo.name)
    shutil.copytree(cases / "mixed_images", images / "ukbench")
    (images / "planted").mkdir()
    Image.open(images / CROP_SOURCE).convert("RGB").crop(CROP_BOX).save(
        images / "planted" / "accordion_crop.png")
    return images


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, cases: Path) -> dict:
    root = tmp_path_factory.mktemp("serving")
    images = build_collection(shared_data, cases, root)
    home = root / "home"
    keys_file = root / "api-keys"  # the clients below are curators: their key goes with each request
    auth = {"X-API-Key": create_key(keys_file, "curator")}
    settings = load_settings(home, {"source": {"uri": str(images)},
                                    "index": {"index_type": "hnsw"},
                                    "clusters": {"min_cluster_size": 3},
                                    "serving": {"refresh_interval_s": 3600,
                                                "search_log_flush_s": 0.2,
                                                "api_keys_file": str(keys_file),
                                                "rate_limit_per_s": 0}})
    run_pipeline(home, settings, say=print)
    usable = sum(1 for p in images.rglob("*") if p.is_file()) - 1  # one corrupt JPEG
    return {"home": home, "images": images, "settings": settings, "usable": usable, "auth": auth}


@pytest.fixture(scope="module")
def client(collection: dict):
    with TestClient(app_for_home(collection["home"], collection["settings"]),
                    headers=collection["auth"]) as client:
        yield client


@pytest.fixture(scope="module")
def ids(client) -> dict[str, str]:
    """Path -> id of every image, from the gallery."""
    return {row["path"]: row["id"] for row in client.get("/gallery", params={"limit": 500})
            .json()["images"]}


def _upload(client, images: Path, path: str, **data) -> dict:
    answer = client.post("/search", files={"file": ("q.jpg", (images / path).read_bytes())},
                         data={k: str(v) for k, v in data.items()})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_health_names_the_live_version_and_the_views(client, collection):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["vectors"] == collection["usable"] > 40
    assert health["index_version"] and health["pinned"] is None
    assert health["text_search"] == "attached_text"
    assert health["clusters"].endswith(".parquet") and health["duplicates"].endswith(".parquet")


def test_gallery_pages_through_the_collection_in_path_order(client, collection):
    first = client.get("/gallery", params={"limit": 20}).json()
    second = client.get("/gallery", params={"offset": 20, "limit": 20}).json()
    assert first["total"] == collection["usable"]
    paths = [r["path"] for r in first["images"] + second["images"]]
    assert paths == sorted(paths) and len(set(paths)) == 40
    row = first["images"][0]
    assert row["thumbnail_url"] == f"/images/{row['id']}/thumbnail" and row["tags"] == []
    assert len(row["labels"]) == 3  # the default model's top ImageNet guesses


def test_search_by_upload_finds_the_photo_and_its_class(client, collection):
    answer = _upload(client, collection["images"], "accordion/image_0005.jpg", k=6)
    paths = [r["path"] for r in answer["results"]]
    assert paths[0] == "accordion/image_0005.jpg" and answer["results"][0]["score"] > 0.99
    assert sum(p.startswith("accordion/") for p in paths[:5]) >= 4
    assert [r["rank"] for r in answer["results"]] == list(range(1, len(paths) + 1))
    first = answer["results"][0]
    assert first["image_url"] == f"/images/{first['id']}"
    assert answer["latency_ms"] > 0 and answer["k"] == 6 and len(answer["query_id"]) == 32


def test_results_fold_by_the_pipelines_groups_and_k_counts_cards(client, collection, ids):
    folded = _upload(client, collection["images"], "ukbench/ukbench00120.jpg", k=10)
    top = folded["results"][0]
    assert top["path"] == "ukbench/ukbench00120.jpg"
    group = client.get(f"/duplicates/{top['group']}").json()  # the card opens its group
    members = {i["path"] for i in group["images"]}
    assert "ukbench/ukbench00120_resize.jpg" in members and group["size"] == top["group_size"]
    # the card carries its whole group: the members found score, the rest ride along
    under = {d["path"]: d for d in top["duplicates"]}
    assert set(under) | {top["path"]} == members
    assert all(d["image_url"] and (d["score"] is None or d["score"] <= top["score"])
               for d in under.values())
    # no group shows twice, and folding never shortens the list: k cards
    shown = [r["path"] for r in folded["results"]]
    assert len(shown) == 10 and not set(under) & set(shown)
    groups = [r["group"] for r in folded["results"] if "group" in r]
    assert len(groups) == len(set(groups)) and folded["folded"] >= len(under)
    flat = _upload(client, collection["images"], "ukbench/ukbench00120.jpg", k=10, fold="false")
    flat_paths = [r["path"] for r in flat["results"]]
    assert "ukbench/ukbench00120_resize.jpg" in flat_paths[:3]
    assert flat["folded"] == 0 and all(r["duplicates"] == [] for r in flat["results"])
    everything = client.get(f"/similar/{ids['camera/image_0001.jpg']}",
                            params={"k": collection["usable"] - 1}).json()["results"]
    cards = len(everything) + sum(len(r["duplicates"]) for r in everything)
    assert cards == collection["usable"] - 1 + sum(  # each image once, the query's group aside
        1 for r in everything for d in r["duplicates"] if d["id"] == ids["camera/image_0001.jpg"])
    assert client.get("/duplicates/100000").status_code == 404


def test_crop_search_finds_the_planted_crop(client, collection):
    answer = _upload(client, collection["images"], CROP_SOURCE, k=3,
                     bbox=",".join(map(str, CROP_BOX)))
    assert answer["results"][0]["path"] == "planted/accordion_crop.png"
    assert answer["results"][0]["score"] > 0.99


def test_similar_leaves_the_query_out(client, ids):
    image_id = ids["butterfly/image_0003.jpg"]
    answer = client.get(f"/similar/{image_id}", params={"k": 5}).json()
    assert image_id not in [r["id"] for r in answer["results"]]
    assert sum(r["path"].startswith("butterfly/") for r in answer["results"]) >= 3


def test_text_search_reads_folder_names_labels_and_tags(client, ids):
    by_folder = client.get("/search/text", params={"q": "accordion", "k": 5}).json()
    assert by_folder["mode"] == "attached_text"
    assert all(r["path"].startswith("accordion/") for r in by_folder["results"])
    assert by_folder["results"][0]["matched"] == "accordion"

    guessed = client.get("/gallery", params={"limit": 500}).json()["images"]
    ukbench = next(r for r in guessed if r["path"] == "ukbench/ukbench09268.jpg")
    label = ukbench["labels"][0]
    by_label = client.get("/search/text", params={"q": label, "k": 50, "fold": "false"}).json()
    hit = next(r for r in by_label["results"] if r["path"] == "ukbench/ukbench09268.jpg")
    assert hit["matched"] == label.lower()

    cameras = [ids[f"camera/image_000{n}.jpg"] for n in (1, 2)]
    assert client.post("/tags", json={"ids": cameras, "tag": "vacation snapshot"}).status_code == 200
    by_tag = client.get("/search/text", params={"q": "vacation", "k": 2}).json()
    assert {r["id"] for r in by_tag["results"]} == set(cameras)
    assert {r["matched"] for r in by_tag["results"]} == {"vacation snapshot"}
    client.request("DELETE", "/tags", json={"ids": cameras, "tag": "vacation snapshot"})


def test_the_tags_of_images_on_screen_come_in_one_read(client, ids):
    """The page refreshes the chips of every card it shows with one POST /tags/of."""
    cameras = [ids[f"camera/image_000{n}.jpg"] for n in (1, 2)]
    other = ids["accordion/image_0001.jpg"]
    assert client.post("/tags", json={"ids": cameras, "tag": "chip"}).status_code == 200
    try:
        answer = client.post("/tags/of", json={"ids": [*cameras, other, "no-such-id"]}).json()
        assert answer["tags"] == {cameras[0]: ["chip"], cameras[1]: ["chip"], other: [],
                                  "no-such-id": []}
        assert client.post("/tags/of", json={"ids": []}).status_code == 422
    finally:
        client.request("DELETE", "/tags", json={"ids": cameras, "tag": "chip"})


def test_result_lists_say_where_the_matches_end(client, ids):
    """Each answer carries the collection's match floor; every result says whether it reaches
    it, the matches come first, and a query that nothing matches says so."""
    accordion = client.get("/search/text", params={"q": "accordion", "k": 30, "fold": "false"}).json()
    floor, results = accordion["relevance"]["floor"], accordion["results"]
    matched = [r for r in results if r["match"]]
    assert 0 < floor < 1 and accordion["relevance"]["matches"] == len(matched) >= 10
    assert all("accordion" in r["path"] for r in matched)  # the folder, and the planted crop
    assert results[:len(matched)] == matched and all(r["score"] < floor for r in results[len(matched):])

    nothing = client.get("/search/text", params={"q": "zebra crossing in the rain"}).json()
    assert nothing["relevance"]["matches"] == 0 and not any(r["match"] for r in nothing["results"])

    similar = client.get(f"/similar/{ids['airplanes/image_0001.jpg']}", params={"k": 30}).json()
    shown = similar["results"]
    close = [r for r in shown if r["match"]]
    assert 0 < similar["relevance"]["floor"] < 1 and 5 <= len(close) < len(shown)
    assert sum(r["path"].startswith("airplanes/") for r in close) >= 0.9 * len(close)
    print(f"\nfloors: text {floor}, image {similar['relevance']['floor']}; 'accordion' "
          f"{len(matched)} of {len(results)} match, airplane similars {len(close)} of {len(shown)}")


@pytest.mark.parametrize(("request_args", "status", "message"), [
    ({"files": {"file": ("x.jpg", b"<html>not an image</html>")}}, 415, "not a usable image"),
    ({"files": {"file": ("x.jpg", b"")}}, 400, "empty"),
    ({"files": {"file": ("x.jpg", b"\xff\xd8\xff\xe0" + b"\0" * 64)}}, 400, "not a usable image"),
    ({"data": {"k": "0"}}, 422, "k must be between 1 and 1000"),
    ({"data": {"k": "5000"}}, 422, "k must be between 1 and 1000"),
    ({"data": {"bbox": "10,10,5,5"}}, 422, "empty or outside"),
    ({"data": {"bbox": "0,0,99999,20"}}, 422, "empty or outside"),
    ({"data": {"bbox": "1,2,3"}}, 422, "four numbers"),
    ({"data": {"bbox": "0,0,1,150"}}, 422, "a strip of 150:1, over the limit of 100:1"),
    ({"data": {"tag": "no-such-tag"}}, 404, "no image has the tag"),
])
def test_bad_search_requests_get_a_clear_4xx(client, collection, request_args, status, message):
    photo = (collection["images"] / "camera" / "image_0001.jpg").read_bytes()
    kwargs = {"files": {"file": ("c.jpg", photo)}, **request_args}
    answer = client.post("/search", **kwargs)
    assert answer.status_code == status
    assert message in answer.json()["detail"]


@pytest.mark.parametrize(("params", "message"), [
    ({"q": "   "}, "empty"),
    ({"q": "x" * 501}, "the most is 500"),
    ({"q": "cat", "k": 0}, "k must be between"),
])
def test_bad_text_queries_get_a_422(client, params, message):
    answer = client.get("/search/text", params=params)
    assert answer.status_code == 422 and message in answer.json()["detail"]


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


def test_images_and_thumbnails_come_from_the_collection(client, collection, ids):
    image_id = ids["planted/accordion_crop.png"]
    original = client.get(f"/images/{image_id}")
    assert original.status_code == 200 and original.headers["content-type"] == "image/png"
    assert original.content == (collection["images"] / "planted" / "accordion_crop.png").read_bytes()
    thumb = client.get(f"/images/{image_id}/thumbnail", params={"size": 64})
    assert thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 64


def test_embed_returns_the_model_vectors_per_file(client, collection):
    photo = (collection["images"] / "camera" / "image_0004.jpg").read_bytes()
    answer = client.post("/embed", files=[("files", ("a.jpg", photo)), ("files", ("b.jpg", photo)),
                                          ("files", ("bad.jpg", b"not an image"))])
    assert answer.status_code == 200
    body = answer.json()
    assert body["model"] == "efficientnet-lite0" and body["dimension"] == 1280  # view regions
    first, second, bad = body["embeddings"]
    vector = np.array(first["vector"])
    assert vector.shape == (1280,) and abs(np.linalg.norm(vector) - 1) < 1e-4
    assert first["vector"] == second["vector"]
    assert bad["filename"] == "bad.jpg" and "not a usable image" in bad["error"]
    # The vector is the one the collection was indexed with: searching by it finds the photo
    # (at a cosine below 1: the indexed vector is augmented with its neighbours, DBA).
    found = _upload(client, collection["images"], "camera/image_0004.jpg", k=1)
    assert found["results"][0]["path"] == "camera/image_0004.jpg"
    assert found["results"][0]["score"] > 0.95
    assert client.post("/embed", files=[("files", ("bad.jpg", b"nope"))]).status_code == 400


def test_repeated_queries_come_from_the_cache(client, collection):
    def hits() -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith('vsearch_query_cache_total{outcome="hit"}'):
                return float(line.split()[-1])
        return 0.0

    before = hits()
    _upload(client, collection["images"], "airplanes/image_0007.jpg", k=3)
    _upload(client, collection["images"], "airplanes/image_0007.jpg", k=3)
    client.get("/search/text", params={"q": "jet plane"})
    client.get("/search/text", params={"q": "jet plane"})
    assert hits() - before == 2


def test_clicks_and_impressions_are_queryable_as_ctr(client, collection):
    app = client.app
    searches = [_upload(client, collection["images"], "butterfly/image_0001.jpg", k=5)
                for _ in range(3)]
    chosen = searches[0]["results"][1]
    clicked = client.post("/click", json={"query_id": searches[0]["query_id"], "id": chosen["id"]})
    assert clicked.json() == {"recorded": True, "rank": 2}
    assert client.post("/click", json={"query_id": "nope", "id": chosen["id"]}).status_code == 404
    not_shown = client.post("/click", json={"query_id": searches[0]["query_id"],
                                            "id": "ffffffffffffffff"})
    assert not_shown.status_code == 422 and "not among" in not_shown.json()["detail"]
    app.state.search_log.flush()
    con = duckdb.connect(str(collection["home"] / "curation.duckdb"), read_only=True)
    try:
        by_rank = dict((r, (n, c)) for r, n, c, _ in con.execute(
            "SELECT * FROM ctr_by_rank").fetchall())
        by_query = con.execute("SELECT searches, impressions, clicks FROM ctr_by_query "
                               "WHERE query LIKE 'upload:%' AND clicks > 0").fetchall()
    finally:
        con.close()
    assert by_rank[2][1] >= 1 and by_rank[1][0] >= 3
    assert by_query and by_query[0][0] >= 3 and by_query[0][1] >= 15 and by_query[0][2] == 1


def test_clusters_carry_suggested_names_that_become_tags(client, collection):
    listing = client.get("/clusters").json()
    sizes = [c["size"] for c in listing["clusters"]]
    assert len(sizes) >= 2 and sum(sizes) + listing["noise"] == collection["usable"]
    assert sizes == sorted(sizes, reverse=True)
    assert all(c["suggested_name"] and c["candidates"] for c in listing["clusters"])
    biggest = listing["clusters"][0]
    members = client.get(f"/clusters/{biggest['label']}", params={"limit": 500}).json()
    assert len(members["images"]) == biggest["size"]
    accepted = client.post(f"/clusters/{biggest['label']}/tag", json={"tag": None}).json()
    assert accepted["tag"] == biggest["suggested_name"] and accepted["added"] == biggest["size"]
    # Now the tag covers every member, so people's word names the cluster.
    again = client.get(f"/clusters/{biggest['label']}").json()
    assert again["suggested_name"] == biggest["suggested_name"]
    assert client.get("/clusters/9999").status_code == 404
    client.request("DELETE", "/tags", json={"ids": [m["id"] for m in members["images"]],
                                            "tag": accepted["tag"]})


def test_duplicate_groups_hold_the_edited_copies(client, collection):
    groups = client.get("/duplicates").json()
    threshold = collection["settings"].near_duplicates.hamming_threshold
    assert groups["total"] >= 1 and groups["rule"]["hamming_threshold"] == threshold
    assert groups["rule"]["method"] == "combined" and groups["rule"]["thresholds"]["cosine_floor"] > 0
    paths = [{i["path"] for i in g["images"]} for g in groups["groups"]]
    assert any({"ukbench/ukbench00120.jpg", "ukbench/ukbench00120_resize.jpg"} <= p for p in paths)


def test_metrics_count_requests_and_describe_the_index(client, collection):
    client.get("/health")
    text = client.get("/metrics").text
    assert 'vsearch_requests_total{endpoint="/health",status="200"}' in text
    assert "vsearch_request_seconds_bucket" in text
    assert f"vsearch_index_vectors {collection['usable']}.0" in text
    assert 'vsearch_index_info{index_type="hnsw"' in text


def test_tags_apply_filter_persist_and_refuse_bad_input(collection, ids):
    images = collection["images"]
    with TestClient(app_for_home(collection["home"], collection["settings"]),
                    headers=collection["auth"]) as client:
        drinks = [ids["ukbench/ukbench09268.jpg"], ids["camera/image_0003.jpg"]]
        plane = ids["airplanes/image_0001.jpg"]
        added = client.post("/tags", json={"ids": [*drinks, drinks[0]], "tag": "drinks"}).json()
        assert added == {"tag": "drinks", "added": 2}
        assert client.post("/tags", json={"ids": drinks, "tag": "drinks"}).json()["added"] == 0
        # A filtered search returns only tagged images, however far they are from the query.
        far = client.get(f"/similar/{plane}", params={"k": 10, "tag": "drinks"}).json()
        assert {r["id"] for r in far["results"]} == set(drinks)
        upload = _upload(client, images, "airplanes/image_0001.jpg", k=5, tag="drinks")
        assert {r["id"] for r in upload["results"]} == set(drinks)
        text = client.get("/search/text", params={"q": "airplanes", "tag": "drinks"}).json()
        assert {r["id"] for r in text["results"]} <= set(drinks)
        gallery = client.get("/gallery", params={"tag": "drinks"}).json()
        assert gallery["total"] == 2 and all("drinks" in r["tags"] for r in gallery["images"])
        assert client.get(f"/similar/{plane}", params={"tag": "nope"}).status_code == 404
        assert client.post("/tags", json={"ids": ["ffffffffffffffff"], "tag": "x"}
                           ).status_code == 404
        assert client.post("/tags", json={"ids": drinks, "tag": "  "}).status_code == 422
        assert client.post("/tags", json={"ids": [], "tag": "x"}).status_code == 422
        injection = "x'); DROP TABLE tags; --"
        assert client.post("/tags", json={"ids": [plane], "tag": injection}).status_code == 200
    with TestClient(app_for_home(collection["home"], collection["settings"]),
                    headers=collection["auth"]) as client:
        tags = {t["tag"]: t["count"] for t in client.get("/tags").json()["tags"]}
        assert tags == {"drinks": 2, injection: 1}  # survived a restart, and the table too
        removed = client.request("DELETE", "/tags", json={"ids": [drinks[0]], "tag": "drinks"})
        assert removed.json() == {"tag": "drinks", "removed": 1}
        client.request("DELETE", "/tags", json={"ids": [plane], "tag": injection})
        client.request("DELETE", "/tags", json={"ids": drinks, "tag": "drinks"})
        assert client.request("DELETE", "/tags", json={"ids": drinks, "tag": "zzz"}
                              ).status_code == 404


def test_an_index_that_does_not_load_is_refused_and_the_old_one_serves(collection):
    from vsearch_pipeline.core.catalog import ArtifactRecords
    from vsearch_pipeline.core.storage import ArtifactStore

    class BreakingRecords(ArtifactRecords):
        """The real records, until a newer version appears whose files are not there."""

        broken = False

        def index_build(self, version=None):
            build = super().index_build(version)
            return {**build, "version": "broken-1", "model_key": "nowhere"} if self.broken else build

    records = BreakingRecords(ArtifactStore(str(collection["home"] / "artifacts")),
                              collection["settings"].model.spec.key)
    holder = IndexHolder(records)
    curation = CurationDB(str(collection["home"] / "curation.duckdb"))
    with TestClient(create_app(holder, collection["settings"].serving, curation),
                    headers=collection["auth"]) as client:
        before = client.get("/health").json()["index_version"]
        records.broken = True
        assert holder.refresh() is False
        health = client.get("/health").json()
        assert health["index_version"] == before
        assert "broken-1 refused" in health["last_error"]
        assert client.get("/similar/ffffffffffffffff").status_code == 404  # still answering
        assert client.put("/index/pin", params={"version": "no-such-version"}).status_code == 404


def test_hot_swap_while_tags_clicks_and_ratings_are_written(collection, ids):
    """A new index materialized while searches, tag writes, clicks and ratings run is swapped in
    with zero failed requests; the pipeline run (which writes its DuckDB and reads the service's)
    and the service's writes never conflict; the ratings become the `feedback` grounding set that
    the evaluation measures; pinning the old version rolls back, unpinning goes forward."""
    settings = collection["settings"]
    watching = settings.model_copy(update={"serving": settings.serving.model_copy(
        update={"refresh_interval_s": 0.5})})
    query = ids["airplanes/image_0002.jpg"]
    with TestClient(app_for_home(collection["home"], watching), headers=collection["auth"]) as client:
        old = client.get("/health").json()["index_version"]
        rated = client.get(f"/similar/{query}", params={"k": 5, "fold": "false"}).json()
        for row in rated["results"]:
            client.post("/feedback", json={"query_id": rated["query_id"], "id": row["id"],
                                           "relevant": row["path"].startswith("airplanes/")})
        relevant = {r["id"] for r in rated["results"] if r["path"].startswith("airplanes/")}
        statuses, versions, tagged, stop = [], set(), [], threading.Event()

        def search() -> None:
            while not stop.is_set():
                answer = client.get(f"/similar/{query}", params={"k": 5})
                statuses.append(answer.status_code)
                body = answer.json()
                versions.add(body.get("index_version"))
                clicked = client.post("/click", json={"query_id": body["query_id"],
                                                      "id": body["results"][0]["id"]})
                statuses.append(clicked.status_code)

        def write_tags() -> None:
            paths = sorted(ids)
            while not stop.is_set():
                image_id = ids[paths[len(tagged) % len(paths)]]
                statuses.append(client.post("/tags", json={"ids": [image_id],
                                                           "tag": f"load-{len(tagged)}"}).status_code)
                tagged.append(image_id)

        workers = [threading.Thread(target=search), threading.Thread(target=write_tags)]
        for worker in workers:
            worker.start()
        try:
            new, pinned, unpinned = _materialize_and_swap(client, collection["home"], settings, old)
        finally:
            stop.set()
            for worker in workers:
                worker.join()
        tags = {t["tag"] for t in client.get("/tags").json()["tags"]}
    assert new != old
    assert pinned["index_version"] == old and pinned["pinned"] == old
    assert unpinned["index_version"] == new and unpinned["pinned"] is None
    assert versions == {old, new}
    assert len(statuses) > 20 and set(statuses) == {200}
    assert {f"load-{n}" for n in range(len(tagged))} <= tags  # every tag write landed
    con = duckdb.connect(str(collection["home"] / "vsearch.duckdb"), read_only=True)
    try:
        figures = dict(con.execute(
            "SELECT metric, value FROM retrieval_metrics WHERE grounding_set = 'feedback' "
            "AND index_version = ?", [new]).fetchall())
    finally:
        con.close()
    assert figures["queries"] == len(relevant) + 1  # the query image and each relevant result
    assert 0 < figures["recall@10"] <= 1


def _materialize_and_swap(client: TestClient, home: Path, settings, old: str
                          ) -> tuple[str, dict, dict]:
    """Run the pipeline in its own process, as in production (DuckDB lets one process at a time
    write a file: both processes write and read while the other is busy); wait for the swap,
    then pin the old version and unpin again."""
    config = home.parent / "flat.yaml"
    flat = settings.model_dump(mode="json")
    flat["index"]["index_type"] = "flat"
    config.write_text(yaml.safe_dump(flat))
    run = subprocess.run([str(Path(sys.executable).parent / "vsearch"), "materialize",
                          "--home", str(home), "--config", str(config)],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    deadline = time.monotonic() + 60
    while client.get("/health").json()["index_version"] == old and time.monotonic() < deadline:
        time.sleep(0.2)
    new = client.get("/health").json()["index_version"]
    time.sleep(1)  # requests keep running on the new index
    pinned = client.put("/index/pin", params={"version": old}).json()
    time.sleep(1)
    return new, pinned, client.delete("/index/pin").json()


def test_outliers_are_their_own_list_in_the_service_and_in_duckdb(client, collection):
    listing = client.get("/clusters").json()
    outliers = client.get("/clusters/-1", params={"limit": 500}).json()
    assert outliers["outliers"] and outliers["suggested_name"] is None
    assert outliers["size"] == listing["noise"] == len(outliers["images"])
    with duckdb.connect(str(collection["home"] / "vsearch.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT id, label, joined_by FROM cluster_members").fetchall()
    assert {i for i, label, _ in rows if label == -1} == {i["id"] for i in outliers["images"]}
    assert {how for _, label, how in rows if label == -1} <= {"outlier"}
    assert {how for _, label, how in rows if label >= 0} <= {"density", "second pass", "neighbours"}
    assert len(rows) == collection["usable"]
