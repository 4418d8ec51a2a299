"""Asset: retrieval quality of the latest index against the grounding sets."""


import time

import numpy as np
from dagster import AssetExecutionContext, MaterializeResult, asset

from vsearch_pipeline.assets.common import (
    STORAGE_RETRY,
    code_version,
    collection_embeddings,
    markdown_table,
    run_keys,
)
from vsearch_pipeline.assets.curation import CURATION_SETS, curation_grounding, curation_set_path
from vsearch_pipeline.assets.hashes import near_duplicate_groups
from vsearch_pipeline.assets.index import faiss_index
from vsearch_pipeline.catalog import latest_index_metadata, load_index_artifacts
from vsearch_pipeline.core.grounding import (
    ResolvedGrounding,
    parse_grounding,
    resolve_grounding,
)
from vsearch_pipeline.core.layout import (
    load_grounding_sets,
    load_manifests,
    reference_lookup,
)
from vsearch_pipeline.core.metrics import retrieval_metrics
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.resources import ArtifactStorage, MetricsDatabase, PipelineSettings


@asset(deps=[faiss_index, near_duplicate_groups, curation_grounding], code_version="2",
       group_name="evaluate", retry_policy=STORAGE_RETRY)
def evaluation(
    context: AssetExecutionContext,
    storage: ArtifactStorage,
    metrics_db: MetricsDatabase,
    settings: PipelineSettings,
) -> MaterializeResult:
    """Recall@k, mAP@k, nDCG@k (and precision and hit rate) of the latest index per grounding set.

    Every grounded image in the index is a query; the other members of its group are the
    relevant answers; the query itself is left out of its results. Besides the configured sets,
    the `feedback` and `tags` sets of `curation_grounding` (what people said in the search
    service) are measured once they hold a group. Also reported: the share of
    same-group pairs that the near-duplicate groups put together. Figures go to the DuckDB table
    `retrieval_metrics`, keyed by model, index type and index version, for comparison by SQL.
    """
    loaded = load_index_artifacts(storage.store, latest_index_metadata(context.instance))
    store = storage.store
    ids, vectors, _ = collection_embeddings(store, loaded.build["model_key"])
    vector_of = dict(zip(ids, range(len(ids)), strict=True))
    manifest = load_manifests(store)
    duplicate_group = _duplicate_groups(metrics_db)
    ks = settings.evaluation.ks
    rows = []
    configured = load_grounding_sets(settings.evaluation.grounding_sets, manifest)
    for grounding in configured + _curation_sets(store, manifest):
        start = time.perf_counter()
        figures = _evaluate(loaded, grounding, vectors, vector_of, ks)
        figures["seconds"] = time.perf_counter() - start
        figures["duplicate_pair_recall"] = _pair_recall(grounding, duplicate_group)
        figures["unresolved_references"] = len(grounding.unresolved)
        metrics_db.db.record_metrics(
            "retrieval", run_keys(context),
            {"model": loaded.build["model_key"], "index_type": loaded.build["params"]["index_type"],
             "index_version": loaded.build["version"], "grounding_set": grounding.name,
             "retrieval": retrieval_label(loaded.build)},
            figures)
        rows.append({"grounding_set": grounding.name, **figures})
    summary_keys = ["grounding_set", "queries"] + [
        f"{m}@{k}" for k in ks for m in ("precision", "recall", "map", "ndcg")
    ] + ["duplicate_pair_recall"]
    return MaterializeResult(metadata={
        "grounding_sets": len(rows), "index_version": loaded.build["version"],
        "index_type": loaded.build["params"]["index_type"], "model_key": loaded.build["model_key"],
        "retrieval": retrieval_label(loaded.build),
        "summary": markdown_table([{k: r[k] for k in summary_keys} for r in rows]),
        **{f"{r['grounding_set']}/{m}": round(float(r[m]), 4) for r in rows
           for m in (f"map@{ks[-1]}", f"recall@{ks[-1]}", f"ndcg@{ks[-1]}", "precision@1")
           if m in r},
        "code_version": code_version(),
    })


def retrieval_label(build: dict) -> str:
    """The post-processing an index was built and is queried with, in one comparable string,
    e.g. 'whiten=256,dba=10,qe=10x2,alpha=3.0,rerank=none,ndfloor=0.75' (the `retrieval`
    column; qe is neighbours x rounds), with ',head=<version>' when a projection head is used."""
    retrieval = build.get("retrieval") or {}
    plan = retrieval.get("query_plan") or {}
    transform = retrieval.get("transform") or {}
    whitening = transform.get("whitening_dims", 0)
    qe_k = plan.get("query_expansion_k", 0)
    qe = f"{qe_k}x{plan.get('query_expansion_rounds', 1)}" if qe_k else "0"
    label = (f"whiten={whitening},dba={retrieval.get('database_augmentation_k', 0)},"
             f"qe={qe},alpha={plan.get('expansion_alpha', 0)},"
             f"rerank={plan.get('rerank', 'none')},ndfloor={plan.get('near_duplicate_floor', 1.0)}")
    head = transform.get("head_version")
    return f"{label},head={head}" if head else label


def _curation_sets(store: ArtifactStore, manifest) -> list[ResolvedGrounding]:
    found = []
    lookup = reference_lookup(manifest)
    for name in CURATION_SETS:
        path = curation_set_path(name)
        if store.exists(path):
            resolved = resolve_grounding(parse_grounding(name, store.read_bytes(path), path),
                                         lookup)
            if resolved.group_of:
                found.append(resolved)
    return found


def _evaluate(loaded, grounding: ResolvedGrounding, vectors: np.ndarray,
              vector_of: dict[str, int], ks: list[int]) -> dict[str, float]:
    positions = loaded.position_of
    item_groups = grounding.labels_for(loaded.ids)
    queries = [i for i in grounding.group_of if i in positions and i in vector_of]
    k = max(ks)
    if not queries:
        return {"queries": 0, "skipped_queries": 0}
    found = loaded.search(loaded.transform.apply(vectors[[vector_of[i] for i in queries]]), k + 1)[1]
    own = np.array([positions[i] for i in queries])
    ranked = np.full((len(queries), k), -1, dtype=np.int64)
    for row, (hits, me) in enumerate(zip(found, own, strict=True)):
        others = hits[hits != me][:k]
        ranked[row, : len(others)] = others
    query_groups = np.array([grounding.group_of[i] for i in queries])
    return retrieval_metrics(ranked, query_groups, item_groups, ks=[x for x in ks if x <= k])


def _duplicate_groups(metrics_db: MetricsDatabase) -> dict[str, int]:
    with metrics_db.db.connect() as con:
        return dict(con.execute("SELECT id, group_id FROM near_duplicate_groups").fetchall())


def _pair_recall(grounding: ResolvedGrounding, duplicate_group: dict[str, int]) -> float:
    """Share of same-group pairs that fall in one near-duplicate group (NaN if no pairs)."""
    members: dict[int, list[str]] = {}
    for image_id, group in grounding.group_of.items():
        members.setdefault(group, []).append(image_id)
    together = total = 0
    for ids in members.values():
        labels = np.array([duplicate_group.get(i, -1) for i in ids])
        counts = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0)
        together += int((counts * (counts - 1) // 2).sum())
        total += len(ids) * (len(ids) - 1) // 2
    return together / total if total else float("nan")
