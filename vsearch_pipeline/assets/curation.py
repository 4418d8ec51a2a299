"""Asset: grounding sets from what people said in the search service (ratings and tags)."""


import os

from dagster import AssetExecutionContext, MaterializeResult, asset

from vsearch_pipeline.assets.common import STORAGE_RETRY, code_version, markdown_table
from vsearch_pipeline.core.grounding import (
    format_grounding,
    grounding_from_ratings,
    grounding_from_tags,
)
from vsearch_pipeline.core.layout import curation_set_path
from vsearch_pipeline.resources import ArtifactStorage, CurationDatabase


@asset(code_version="1", retry_policy=STORAGE_RETRY)
def curation_grounding(
    context: AssetExecutionContext,
    storage: ArtifactStorage,
    curation_db: CurationDatabase,
) -> MaterializeResult:
    """Two grounding sets the evaluation measures the search against, from the service's
    `curation.duckdb`: `feedback` (one group per query: the images rated relevant to it, with the
    query image) and `tags` (one group per tag). Written as `grounding/<name>.csv`.

    The service writes that file in short transactions and this asset only reads it, between
    them (a busy file is retried), so neither waits on the other for long.
    """
    db = curation_db.db
    exists = os.path.exists(db.path)
    ratings = db.latest_ratings() if exists else []
    tagged = db.all_tags() if exists else []
    rows = {"feedback": grounding_from_ratings(ratings), "tags": grounding_from_tags(tagged)}
    for name, found in rows.items():
        storage.store.write_bytes(curation_set_path(name), format_grounding(found).encode())
    summary = [{"grounding_set": name, "groups": len({g for g, _ in found}), "images": len(found)}
               for name, found in rows.items()]
    context.log.info(f"curation grounding: {summary}")
    return MaterializeResult(metadata={
        "ratings": len(ratings), "relevant": sum(r[2] for r in ratings), "tagged": len(tagged),
        **{f"{s['grounding_set']}_groups": s["groups"] for s in summary},
        "sets": markdown_table(summary), "code_version": code_version(),
    })
