"""The graph over images in a bucket on a real S3 server (moto in server mode) on 127.0.0.1,
read through s3fs, with the artifacts written to the same S3 server."""

from pathlib import Path

import boto3
import duckdb
import pytest

from vsearch_pipeline.core.catalog import latest_index
from vsearch_pipeline.core.demo import build_demo_corpus
from vsearch_pipeline.core.model_spec import DEFAULT_KEY
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.runner import run_pipeline
from vsearch_pipeline.search import Searcher
from vsearch_pipeline.settings import load_settings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("s3_credentials")]
BUCKET = "photos"


def _upload(endpoint: str, folder: Path, prefix: str) -> int:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    for path in files:
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return len(files)


def test_pipeline_reads_and_writes_s3(s3_endpoint, tmp_path):
    images, grounding = build_demo_corpus(tmp_path / "demo")
    uploaded = _upload(s3_endpoint, images, "demo")
    home = tmp_path / "home"
    settings = load_settings(home, {
        "source": {"uri": f"s3://{BUCKET}/demo", "endpoint_url": s3_endpoint},
        "storage": {"root": f"s3://{BUCKET}/artifacts", "endpoint_url": s3_endpoint},
        "index": {"index_type": "flat"},
        "clusters": {"min_cluster_size": 3},
        "evaluation": {"grounding_sets": [str(grounding)]},
    })
    summary = run_pipeline(home, settings, say=print)
    assert summary["success"]

    store = ArtifactStore(f"s3://{BUCKET}/artifacts", s3_endpoint)
    manifest = store.read_parquet("manifest/b00001.parquet").to_pylist()
    assert len(manifest) == uploaded
    assert all(r["uri"].startswith(f"s3://{BUCKET}/demo/") for r in manifest)
    statuses = {r["path"]: r["status"] for r in manifest}
    assert statuses["broken/truncated.jpg"] == "corrupt"
    assert sum(s == "ok" for s in statuses.values()) == uploaded - 1
    assert store.list(f"embeddings/{DEFAULT_KEY}", ".parquet")

    with duckdb.connect(str(home / "vsearch.duckdb"), read_only=True) as con:
        figures = dict(con.execute(
            "SELECT metric, value FROM retrieval_metrics WHERE grounding_set = 'demo'"
        ).fetchall())
    assert figures["precision@1"] >= 0.95

    assert store.root == f"s3://{BUCKET}/artifacts"
    searcher = Searcher.from_build(store, latest_index(store, DEFAULT_KEY), s3_endpoint)
    top = searcher.by_image((images / "rocket" / "crop.jpg").read_bytes(), 3)
    assert top[0]["path"] == "rocket/crop.jpg"
    assert {r["path"].split("/")[0] for r in top} == {"rocket"}
    by_id = searcher.by_id(top[0]["id"], 3)
    assert top[0]["id"] not in {r["id"] for r in by_id}
    assert by_id[0]["path"].startswith("rocket/")

    # The search service over the same S3 artifacts: images, clusters and duplicate groups come
    # from the bucket, by id only.
    from fastapi.testclient import TestClient

    from serving.app import app_for_home

    with TestClient(app_for_home(home, settings)) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["duplicates"].startswith("duplicates/")
        image = client.get(f"/images/{top[0]['id']}")
        assert image.status_code == 200
        assert image.content == (images / "rocket" / "crop.jpg").read_bytes()
        assert client.get(f"/images/{top[0]['id']}/thumbnail").headers["content-type"] == "image/jpeg"
        groups = client.get("/duplicates").json()["groups"]
        assert any({"rocket/original.png", "rocket/crop.jpg"} & {i["path"] for i in g["images"]}
                   for g in groups)
        assert client.get("/clusters").json()["clusters"]
