"""Search quality on Caltech-101 (without BACKGROUND_Google) by retrieval setting, through the
pipeline itself: every figure comes from the `evaluation` asset's rows in DuckDB.

The photos go into a fresh source folder with a grounding set (relevant = same class), the
pipeline runs once, and then `retrieval_transform`, `faiss_index` and `evaluation` are
materialized again for each setting below, from the raw backbone (exact cosine search over the
model's vectors) to the full post-processing. One SQL query then gives mAP@10 and precision@1
per setting, the index build time, and the time a single query takes (one at a time, over the
index as the search service loads it). `--quick` does the same on every 10th photo.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from dagster import AssetKey

from benchmarks.pipeline import caltech_photos
from vsearch_pipeline.core.artifacts import image_locations, load_embeddings, load_manifests
from vsearch_pipeline.core.catalog import latest_index, load_index
from vsearch_pipeline.core.layout import HomeLayout
from vsearch_pipeline.core.near_duplicates import reference_copy_groups, score_pairs, truth_pairs
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.core.store import MetricsDB
from vsearch_pipeline.definitions import make_definitions
from vsearch_pipeline.runner import open_instance, run_pipeline
from vsearch_pipeline.settings import load_settings

OFF = {"whitening": False, "database_augmentation_k": 0, "query_expansion_k": 0,
       "query_expansion_rounds": 1, "rerank": "none", "near_duplicate_floor": 1.0}
DBA_QE = {**OFF, "database_augmentation_k": 10, "query_expansion_k": 10}
NEAR_FIRST = {**DBA_QE, "near_duplicate_floor": 0.7}
DEFAULT_RETRIEVAL = {**NEAR_FIRST, "whitening": True}
SETTINGS = {
    "raw backbone": OFF,
    "whitening": {**OFF, "whitening": True},
    "DBA k=10": {**OFF, "database_augmentation_k": 10},
    "alpha-QE k=10": {**OFF, "query_expansion_k": 10},
    "k-reciprocal re-ranking": {**OFF, "rerank": "k_reciprocal"},
    "DBA + alpha-QE": DBA_QE,
    "DBA + alpha-QE + near-duplicates first": NEAR_FIRST,
    "whitening + DBA + alpha-QE + near-duplicates first (default)": DEFAULT_RETRIEVAL,
    "default + 2 rounds of alpha-QE": {**DEFAULT_RETRIEVAL, "query_expansion_rounds": 2},
    "default + re-ranking": {**DEFAULT_RETRIEVAL, "rerank": "k_reciprocal"},
    "projection head + default": {**DEFAULT_RETRIEVAL, "projection_head": True},
    "default, served by HNSW32,SQ8 (the served default)": DEFAULT_RETRIEVAL,
    "default, served by HNSW32 over float32": DEFAULT_RETRIEVAL,
}
# The index each setting is served by: exact search (flat) unless named here, so that the rows
# above measure the descriptor and its stages, and these two what a served index keeps of it
INDEXES = {"default, served by HNSW32,SQ8 (the served default)": {"index_type": "hnsw", "storage": "SQ8"},
           "default, served by HNSW32 over float32": {"index_type": "hnsw", "storage": "Flat"}}
REBUILT = [AssetKey(name) for name in
           ("projection_head", "retrieval_transform", "faiss_index", "evaluation")]
LATENCY_QUERIES = 200


def place(photos: list[Path], source: Path, home: Path) -> Path:
    """The photos under source/<class>/ and a grounding set of their classes in the home."""
    lines = ["group,image"]
    for photo in photos:
        target = source / photo.parent.name / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, target)
        lines.append(f"{photo.parent.name},{photo.parent.name}/{photo.name}")
    grounding = home / "caltech101.csv"
    grounding.write_text("\n".join(lines) + "\n")
    return grounding


def query_figures(home: Path, settings) -> dict[str, float]:
    """Over the live index, as the search service loads it: the mean time of one query
    (transform, expansion, search, re-ranking), and how often a Faces_easy photo's upload finds
    its twin in Faces (the same photo, uncropped) among the top 5 other results."""
    defs = make_definitions(home, settings)
    store = defs.resources["storage"].store
    loaded = load_index(store, latest_index(store, defs.resources["model"].spec.key))
    ids, vectors, _ = load_embeddings(store, loaded.build["model_key"])
    row_of = {image_id: row for row, image_id in enumerate(ids)}
    rows = np.random.default_rng(0).choice(len(ids), min(LATENCY_QUERIES, len(ids)), replace=False)
    for row in rows[:10]:  # warm-up: the first queries pay for lazy set-up (re-ranking sets)
        loaded.search(loaded.transform.apply(vectors[row]), 11)
    start = time.perf_counter()
    for row in rows:
        loaded.search(loaded.transform.apply(vectors[row]), 11)
    query_ms = 1000 * (time.perf_counter() - start) / len(rows)
    position = {path: p for p, path in enumerate(loaded.paths)}
    twins = [(p, position[f"Faces/{path.split('/', 1)[1]}"]) for path, p in position.items()
             if path.startswith("Faces_easy/") and f"Faces/{path.split('/', 1)[1]}" in position]
    found = [twin in loaded.search(loaded.transform.apply(vectors[row_of[loaded.ids[easy]]]),
                                   6)[1][0][1:6] for easy, twin in twins]
    return {"query_ms": query_ms, "twin_in_top5": float(np.mean(found)) if found else None,
            "twin_pairs": len(twins), "served_bytes_per_image": served_bytes(loaded)}


def served_bytes(loaded) -> float:
    """What the service holds per image for this index: the FAISS index (vectors or codes and
    graph) and the plain vectors kept beside it for searches by id (float16, with DBA)."""
    import faiss

    index_bytes = faiss.serialize_index(loaded.index).nbytes
    plain = loaded.plain.nbytes if loaded.plain is not None else 0  # Int8Rows: codes and scales
    return (index_bytes + plain) / loaded.index.ntotal


def run(quick: bool = False) -> dict:
    photos = [p for p in caltech_photos(quick=False) if p.parent.name != "BACKGROUND_Google"]
    photos = photos[::10] if quick else photos
    work = Path(tempfile.mkdtemp(prefix="vsearch-quality-"))
    try:
        source, home = work / "photos", work / "home"
        home.mkdir()
        grounding = place(photos, source, home)
        base = {"source": {"uri": str(source)}, "index": {"index_type": "flat"},
                "evaluation": {"grounding_sets": [str(grounding)], "ks": [1, 10]}}
        start = time.perf_counter()
        run_pipeline(home, load_settings(home, {**base, "retrieval": OFF}), say=lambda _: None)
        print(f"{len(photos)} photos embedded and indexed in {time.perf_counter() - start:.0f} s",
              flush=True)
        first_run = near_duplicate_figures(home) | embedding_figures(home)
        measured = {}
        for name, retrieval in SETTINGS.items():
            index = {**base["index"], **INDEXES.get(name, {})}
            settings = load_settings(home, {**base, "retrieval": retrieval, "index": index})
            defs = make_definitions(home, settings)
            defs.get_implicit_global_asset_job_def().execute_in_process(
                asset_selection=REBUILT, instance=open_instance(home), raise_on_error=True)
            measured[name] = query_figures(home, settings)
            print(f"measured: {name}", flush=True)
        return {**report(HomeLayout(home).metrics_db, measured), "first run": first_run}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def near_duplicate_figures(home: Path) -> dict[str, float]:
    """Precision and recall of the pipeline's near-duplicate groups against the known copies
    (Faces_easy photos are tighter crops of Faces photos); precision over the pairs touching
    the Faces folders, whose copies are all known. Retrieval settings do not change the groups."""
    where = image_locations(load_manifests(ArtifactStore(str(HomeLayout(home).artifacts))))
    with MetricsDB(str(HomeLayout(home).metrics_db)).connect(read_only=True) as con:
        rows = con.execute("SELECT group_id, list(id) FROM near_duplicate_groups GROUP BY 1").fetchall()
    predicted = [(where[a][1], where[b][1]) for _, members in rows
                 for n, a in enumerate(members) for b in members[n + 1:]]
    truth = truth_pairs(reference_copy_groups(path for _, path in where.values()))
    scores = score_pairs(predicted, truth, lambda path: path.startswith("Faces"))
    print(f"near-duplicate groups: precision {scores.precision:.3f}, recall {scores.recall:.3f} "
          f"({scores.true_found} of {scores.truth} known pairs, {scores.predicted_in_scope} "
          "pairs judged)", flush=True)
    return {"near_duplicate_precision": scores.precision, "near_duplicate_recall": scores.recall,
            "near_duplicate_pairs_found": scores.true_found}


def embedding_figures(home: Path) -> dict[str, float]:
    """Images embedded per second by the embeddings step (both views where there are two)."""
    with MetricsDB(str(HomeLayout(home).metrics_db)).connect(read_only=True) as con:
        seconds, images = con.execute(
            "SELECT sum(value) FILTER (metric = 'seconds'), "
            "sum(value) FILTER (metric = 'embedded_now') FROM embedding_metrics").fetchone()
    print(f"embedding: {images:.0f} photos in {seconds:.0f} s, {images / seconds:.1f} a second",
          flush=True)
    return {"embedding_seconds": seconds, "embedded": images}


QUERY = """
WITH r AS (
  SELECT index_version, retrieval, max(CASE WHEN metric = 'map@10' THEN value END) AS map10,
         max(CASE WHEN metric = 'precision@1' THEN value END) AS p1,
         max(CASE WHEN metric = 'queries' THEN value END) AS queries
  FROM retrieval_metrics WHERE grounding_set = 'caltech101' GROUP BY ALL),
i AS (SELECT index_version, max(value) AS build_s FROM index_metrics
      WHERE metric = 'build_seconds' GROUP BY ALL)
SELECT r.retrieval, r.map10, r.p1, r.queries, i.build_s
FROM r JOIN i USING (index_version) ORDER BY r.index_version
"""


def report(database: Path, measured: dict[str, dict]) -> dict:
    with MetricsDB(str(database)).connect(read_only=True) as con:
        rows = con.execute(QUERY).fetchall()[-len(SETTINGS):]
    raw_build, raw_query = rows[0][4], measured["raw backbone"]["query_ms"]
    pairs = measured["raw backbone"]["twin_pairs"]
    print(f"| setting | retrieval column | mAP@10 | precision@1 | Faces twin in top 5 ({pairs} pairs) "
          "| index build s (+ vs raw) | one query ms (+ vs raw) | served bytes/image |\n"
          "|---|---|---|---|---|---|---|---|")
    figures = {}
    for (name, q), (label, map10, p1, queries, build_s) in zip(measured.items(), rows, strict=True):
        ms = q["query_ms"]
        twin = "n/a" if q["twin_in_top5"] is None else f"{q['twin_in_top5']:.3f}"
        print(f"| {name} | `{label}` | {map10:.4f} | {p1:.4f} | {twin} "
              f"| {build_s:.1f} ({build_s - raw_build:+.1f}) | {ms:.2f} ({ms - raw_query:+.2f}) "
              f"| {q['served_bytes_per_image']:,.0f} |")
        figures[name] = {"retrieval": label, "map@10": map10, "precision@1": p1,
                         "queries": queries, "build_seconds": build_s, **q}
    return figures
