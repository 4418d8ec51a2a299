"""Asset: retrieval quality of the latest index against the grounding sets."""


from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from vsearch_pipeline.assets.common import (
    STORAGE_RETRY,
    code_version,
    collection_embeddings,
    markdown_table,
    run_keys,
    setting,
)
from vsearch_pipeline.assets.curation import curation_grounding
from vsearch_pipeline.assets.hashes import near_duplicate_groups
from vsearch_pipeline.assets.index import faiss_index
from vsearch_pipeline.core.artifacts import load_grounding_sets, load_manifests
from vsearch_pipeline.core.catalog import latest_index, load_index
from vsearch_pipeline.core.evaluation import curation_sets, measure_with_slices, retrieval_label
from vsearch_pipeline.resources import (
    ArtifactStorage,
    EmbeddingModelResource,
    MetricsDatabase,
    PipelineSettings,
)


@asset(deps=[faiss_index, near_duplicate_groups, curation_grounding], code_version="2",
       retry_policy=STORAGE_RETRY)
def evaluation(
    context: AssetExecutionContext,
    storage: ArtifactStorage,
    metrics_db: MetricsDatabase,
    settings: PipelineSettings,
    model: EmbeddingModelResource,
) -> MaterializeResult:
    """Recall@k, mAP@k, nDCG@k (and precision and hit rate) of the latest index per grounding set.

    Every grounded image in the index is a query; the other members of its group are the
    relevant answers; the query itself is left out of its results. Besides the configured sets,
    the `feedback` and `tags` sets of `curation_grounding` (what people said in the search
    service) are measured once they hold a group. Also reported: the share of
    same-group pairs that the near-duplicate groups put together (`duplicate_pair_recall`), and
    the share of the near-duplicate pairs among the set's images that the set puts in one group
    (`duplicate_pair_precision`). Figures go to the DuckDB table
    `retrieval_metrics`, keyed by model, index type and index version, for comparison by SQL.
    """
    store = storage.store
    loaded = load_index(store, latest_index(store, model.spec.key))  # as the search service does
    build = loaded.build
    ids, vectors, _ = collection_embeddings(store, build["model_key"])
    vector_of = dict(zip(ids, range(len(ids)), strict=True))
    manifest = load_manifests(store)
    duplicate_group = metrics_db.db.duplicate_groups()
    ks = settings.evaluation.ks
    keys = {"model": build["model_key"], "index_type": build["params"]["index_type"],
            "index_version": build["version"], "retrieval": retrieval_label(build)}
    rows = []
    configured = load_grounding_sets(settings.evaluation.grounding_sets, manifest)
    for grounding in configured + curation_sets(store, manifest):
        for name, figures in measure_with_slices(loaded, grounding, vectors, vector_of, ks,
                                                 duplicate_group):
            metrics_db.db.record_metrics("retrieval", run_keys(context),
                                         {**keys, "grounding_set": name}, figures)
            rows.append({"grounding_set": name, **figures})
    return MaterializeResult(metadata={
        "grounding_sets": setting(len(rows)), "index_version": build["version"],
        "index_type": build["params"]["index_type"], "model_key": build["model_key"],
        "retrieval": keys["retrieval"], "summary": _summary(rows, ks),
        **{f"{r['grounding_set']}/{m}": round(float(r[m]), 4) for r in rows
           if "/" not in r["grounding_set"]  # sets are plotted over runs; slices are in the table
           for m in (f"map@{ks[-1]}", f"recall@{ks[-1]}", f"ndcg@{ks[-1]}", "precision@1")
           if m in r},
        "code_version": code_version(),
    })


def _summary(rows: list[dict], ks: list[int]) -> MetadataValue:
    """The main figures of each grounding set and slice, as a Markdown table narrow enough for
    the asset page (every k of every measure is in DuckDB and `vsearch metrics`)."""
    k = ks[-1]
    columns = {"queries": "queries", "precision@1": "P@1", f"recall@{k}": f"R@{k}",
               f"map@{k}": f"mAP@{k}", f"ndcg@{k}": f"nDCG@{k}",
               "duplicate_pair_recall": "dup. recall", "duplicate_pair_precision": "dup. precision"}
    return markdown_table([{"set": r["grounding_set"],
                            **{short: _rounded(r.get(key)) for key, short in columns.items()}}
                           for r in rows])


def _rounded(value: object) -> object:
    return round(value, 3) if isinstance(value, float) else value
