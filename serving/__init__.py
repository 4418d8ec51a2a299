"""The search service (FastAPI) over the artifacts the pipeline wrote.

It finds what to serve through `vsearch_pipeline.core.catalog` (the build records beside the
index versions, the newest clusters and duplicate groups; never the Dagster instance) and
embeds queries with `vsearch_pipeline.search.Searcher`, which the `vsearch search` command uses
too. docs/architecture.md has the layers and what each may import.
"""
