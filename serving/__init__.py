"""The search service (FastAPI) over the artifacts the pipeline materialized.

It builds on `vsearch_pipeline.catalog` (finding the latest index materialization through the
Dagster instance) and `vsearch_pipeline.search.Searcher` (embedding a query with the index's own
model), which the `vsearch search` command already uses.
"""
