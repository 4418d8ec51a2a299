"""The latest figures of a collection, straight from its DuckDB file (`vsearch metrics`).

Each section is one SQL query over the metric tables, kept here as text so that the README can
show it and people can start their own questions from it. "Latest" means the most recent run of
each asset (and partition): older runs stay in the tables for comparison.
"""

from __future__ import annotations

import duckdb

LATEST_RUN = "QUALIFY run_id = arg_max(run_id, recorded_at) OVER (PARTITION BY asset, partition)"

SECTIONS: dict[str, str] = {
    "partitions": f"""
        WITH figures AS (
            SELECT run_id, asset, partition, recorded_at, metric, value FROM manifest_metrics
            UNION ALL SELECT run_id, asset, partition, recorded_at, metric, value
                FROM embedding_metrics
            UNION ALL SELECT run_id, asset, partition, recorded_at, metric, value FROM hash_metrics
                WHERE partition IS NOT NULL),
        latest AS (SELECT * FROM figures {LATEST_RUN})
        SELECT partition,
            max(value) FILTER (asset = 'raw_image_manifest' AND metric = 'files') AS files,
            max(value) FILTER (asset = 'raw_image_manifest' AND metric = 'status_ok') AS usable,
            max(value) FILTER (asset = 'embeddings' AND metric = 'images') AS embedded,
            max(value) FILTER (asset = 'embeddings' AND metric = 'embedded_now') AS embedded_now,
            max(value) FILTER (asset = 'embeddings' AND metric = 'seconds') AS embed_seconds,
            max(value) FILTER (asset = 'perceptual_hashes' AND metric = 'hashed') AS hashed,
            max(value) FILTER (asset = 'perceptual_hashes' AND metric = 'seconds') AS hash_seconds
        FROM latest GROUP BY partition ORDER BY partition""",
    "index": f"""
        SELECT model, index_type, index_version,
            max(value) FILTER (metric = 'vectors') AS vectors,
            max(value) FILTER (metric = 'recall_at_10') AS recall_at_10,
            max(value) FILTER (metric = 'build_seconds') AS build_seconds
        FROM (SELECT * FROM index_metrics {LATEST_RUN}) GROUP BY ALL""",
    "retrieval": f"""
        SELECT grounding_set,
            max(value) FILTER (metric = 'queries') AS queries,
            max(value) FILTER (metric = 'precision@1') AS "precision@1",
            max(value) FILTER (metric = 'map@10') AS "map@10",
            max(value) FILTER (metric = 'recall@10') AS "recall@10",
            max(value) FILTER (metric = 'ndcg@10') AS "ndcg@10",
            max(value) FILTER (metric = 'duplicate_pair_recall') AS duplicate_pair_recall
        FROM (SELECT * FROM retrieval_metrics {LATEST_RUN})
        GROUP BY grounding_set ORDER BY grounding_set""",
    "clusters": f"""
        SELECT coalesce(grounding_set, '(all)') AS grounding_set, method, reduce,
            max(value) FILTER (metric = 'n_clusters') AS clusters,
            max(value) FILTER (metric = 'noise_share') AS noise_share,
            max(value) FILTER (metric = 'silhouette') AS silhouette,
            max(value) FILTER (metric = 'purity') AS purity,
            max(value) FILTER (metric = 'adjusted_rand') AS adjusted_rand,
            max(value) FILTER (metric = 'nmi') AS nmi,
            max(value) FILTER (metric = 'coverage') AS coverage
        FROM (SELECT * FROM cluster_metrics {LATEST_RUN})
        GROUP BY ALL ORDER BY grounding_set NULLS FIRST""",
    "near_duplicates": """
        SELECT count(DISTINCT group_id) AS groups, count(*) AS images_in_groups,
            coalesce(max(size), 0) AS largest_group
        FROM near_duplicate_groups
        JOIN (SELECT group_id, count(*) AS size FROM near_duplicate_groups GROUP BY group_id)
            USING (group_id)""",
}


# The sections over the insight asset's tables (absent until it first ran).
INSIGHT_SECTIONS: dict[str, str] = {
    "insight": """
        SELECT count(*) AS images, count(label) AS labelled,
            count(*) FILTER (label_flagged) AS label_mistakes,
            count(*) FILTER (outlier >= 0.99) AS odd_ones_1pct
        FROM image_insight""",
    "quality": """
        SELECT flag, count(*) AS files,
            round(median(sharpness), 1) AS median_sharpness,
            round(median(brightness), 3) AS median_brightness
        FROM (SELECT unnest(flags) AS flag, sharpness, brightness FROM image_quality)
        GROUP BY flag ORDER BY flag""",
}

FLAGGED_FILES = """
    SELECT path, width, height, format, round(sharpness, 1) AS sharpness,
        round(brightness, 3) AS brightness, round(contrast, 3) AS contrast,
        round(colourfulness, 1) AS colourfulness, jpeg_quality, taken_at, camera,
        array_to_string(flags, ',') AS flags
    FROM image_quality WHERE list_contains(flags, ?) ORDER BY path"""


def flagged_files(path: str, flag: str) -> dict:
    """The files the insight asset flagged `flag` (blurry, dark, bright, tiny), with figures."""
    with duckdb.connect(path, read_only=True) as con:
        if not _has_table(con, "image_quality"):
            raise LookupError("no image quality figures yet: run `vsearch materialize`")
        cursor = con.execute(FLAGGED_FILES, [flag])
        return {"columns": [d[0] for d in cursor.description],
                "rows": [list(row) for row in cursor.fetchall()]}


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
                            [name]).fetchone()[0])


def latest_figures(path: str) -> dict[str, dict]:
    """Each section as {"columns": [...], "rows": [[...], ...]}, read without locking out a
    writer for longer than the queries take."""
    report = {}
    with duckdb.connect(path, read_only=True) as con:
        sections = SECTIONS | (INSIGHT_SECTIONS if _has_table(con, "image_insight") else {})
        for name, sql in sections.items():
            cursor = con.execute(sql)
            report[name] = {"columns": [d[0] for d in cursor.description],
                            "rows": [list(row) for row in cursor.fetchall()]}
    return report


def format_table(columns: list[str], rows: list[list]) -> str:
    """Aligned plain-text columns; numbers with four decimals at most."""
    cells = [columns] + [[cell_text(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return "\n".join(lines[:1] + ["  ".join("-" * w for w in widths)] + lines[1:])


def cell_text(value: object) -> str:
    """A figure as the tables show it: '-' for none, whole numbers without decimals."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.4f}"
    return str(value)
