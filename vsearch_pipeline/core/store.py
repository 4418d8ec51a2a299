"""The DuckDB database that people open and query: metrics of every run, hashes, duplicate groups.

Metrics live in one table per kind (``<kind>_metrics``), in long form: one row per figure, keyed
by run, asset and partition, with the settings that tell runs apart (model, index type, method...)
as columns, so that comparing two runs is plain SQL.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import threading
import time
import unicodedata
from collections.abc import Iterator, Mapping

import duckdb
import pyarrow as pa

METRIC_KINDS: dict[str, tuple[str, ...]] = {
    "manifest": (),
    "subset": ("fraction", "seed"),
    "embedding": ("model", "model_version", "precision"),
    "hash": ("hamming_threshold", "method"),
    "index": ("model", "index_type", "index_version", "params", "mode"),
    "cluster": ("model", "method", "reduce", "params", "grounding_set"),
    "retrieval": ("model", "index_type", "index_version", "grounding_set", "retrieval"),
    "transform": ("model", "transform_version"),
    "projection_head": ("model", "head_version"),
    "insight": ("model",),
}

REPLACED_TABLES = ("image_quality", "image_insight")  # written whole by the insight asset

SCHEMA = """
CREATE TABLE IF NOT EXISTS perceptual_hashes (
    id VARCHAR NOT NULL, partition VARCHAR NOT NULL, phash UBIGINT NOT NULL,
    PRIMARY KEY (id, partition));
CREATE TABLE IF NOT EXISTS near_duplicate_groups (
    run_id VARCHAR NOT NULL, id VARCHAR NOT NULL, group_id BIGINT NOT NULL);
ALTER TABLE near_duplicate_groups ADD COLUMN IF NOT EXISTS keeper BOOLEAN;
CREATE TABLE IF NOT EXISTS cluster_members (
    run_id VARCHAR NOT NULL, model VARCHAR NOT NULL, id VARCHAR NOT NULL, label BIGINT NOT NULL,
    joined_by VARCHAR NOT NULL);
"""


def _metric_table_sql(kind: str, columns: tuple[str, ...]) -> str:
    extra = "".join(f", {c} VARCHAR" for c in columns)
    return (
        f"CREATE TABLE IF NOT EXISTS {kind}_metrics (run_id VARCHAR, asset VARCHAR, "
        f"partition VARCHAR, recorded_at TIMESTAMP{extra}, metric VARCHAR, value DOUBLE)"
    )


_FILE_LOCKS: dict[str, threading.RLock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _file_lock(path: str) -> threading.RLock:
    """One lock per database file in this process. DuckDB shares one database instance among a
    process's connections to a file, and opening one while another thread closes the last one
    fails ('already attached'); so within a process a file has one connection at a time."""
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(os.path.abspath(path), threading.RLock())


class MetricsDB:
    """A DuckDB file; each write is one transaction, and a busy file is retried, not failed.

    No connection outlives its transaction: DuckDB lets one process at a time open a file for
    writing, so the pipeline and the search service take turns (the other waits and retries)."""

    def __init__(self, path: str, lock_timeout_s: float = 120.0):
        self.path = path
        self.lock_timeout_s = lock_timeout_s

    @contextlib.contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        if not read_only:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with _file_lock(self.path):
            con = self._open(read_only)
            try:
                if not read_only:
                    self._ensure_schema(con)
                yield con
            finally:
                con.close()

    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                return duckdb.connect(self.path, read_only=read_only)
            except duckdb.IOException as err:
                if "lock" not in str(err).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2 + random.random() * 0.5)

    @staticmethod
    def _ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(SCHEMA)
        for kind, columns in METRIC_KINDS.items():
            con.execute(_metric_table_sql(kind, columns))
            for column in columns:  # a file made by an older version lacks the newer columns
                con.execute(f"ALTER TABLE {kind}_metrics ADD COLUMN IF NOT EXISTS {column} VARCHAR")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def record_metrics(
        self,
        kind: str,
        run: Mapping[str, str | None],
        keys: Mapping[str, object],
        metrics: Mapping[str, float],
        recorded_at: dt.datetime | None = None,
        replace: bool = False,
    ) -> None:
        """Append one row per figure. `run` holds run_id, asset and partition; with `replace`,
        the rows of that run, asset and partition go first (a record filed twice counts once)."""
        columns = METRIC_KINDS[kind]
        unknown = set(keys) - set(columns)
        if unknown:
            raise ValueError(f"{kind}_metrics has no columns {sorted(unknown)}")
        now = recorded_at or dt.datetime.now(dt.UTC).replace(tzinfo=None)
        key_values = [_as_text(keys.get(c)) for c in columns]
        rows = [
            [run["run_id"], run["asset"], run.get("partition"), now, *key_values, name,
             float(value)]
            for name, value in metrics.items()
        ]
        names = ("run_id", "asset", "partition", "recorded_at", *columns, "metric", "value")
        with self.transaction() as con:
            if replace:
                con.execute(f"DELETE FROM {kind}_metrics WHERE run_id = ? AND asset = ? "
                            "AND partition IS NOT DISTINCT FROM ?",
                            [run["run_id"], run["asset"], run.get("partition")])
            insert_rows(con, f"{kind}_metrics", rows, names)

    def replace_perceptual_hashes(self, hashes: pa.Table | None) -> None:
        """Refill the table `perceptual_hashes` with `hashes` (id, phash, partition); None empties it."""
        with self.transaction() as con:
            con.execute("DELETE FROM perceptual_hashes")
            if hashes is not None:
                con.register("hash_files", hashes)
                con.execute("INSERT INTO perceptual_hashes SELECT id, partition, phash FROM hash_files")
                con.unregister("hash_files")

    def distinct_hashes(self) -> list[tuple[str, int]]:
        """(id, pHash) of every hashed image once, by id (an id hashed in two batches has one hash)."""
        with self.connect() as con:
            return con.execute("SELECT id, any_value(phash) FROM perceptual_hashes "
                               "GROUP BY id ORDER BY id").fetchall()

    def replace_duplicate_groups(self, rows: list[tuple[str, str, int, bool]]) -> None:
        """Replace the table `near_duplicate_groups` with `rows` (run id, image id, group,
        whether the keeper rule keeps it)."""
        with self.transaction() as con:
            con.execute("DELETE FROM near_duplicate_groups")
            insert_rows(con, "near_duplicate_groups", rows)

    def replace_cluster_members(self, model: str, rows: list[tuple[str, str, str, int, str]]
                                ) -> None:
        """Replace the model's rows of `cluster_members` (run id, model, image id, label, how it
        joined: density, second pass, neighbours, or outlier with label -1)."""
        with self.transaction() as con:
            con.execute("DELETE FROM cluster_members WHERE model = ?", [model])
            insert_rows(con, "cluster_members", rows)

    def replace_table(self, name: str, table: pa.Table) -> None:
        """Replace the whole table `name` (one of REPLACED_TABLES) with `table`: each run of
        the insight asset gives the collection's full picture."""
        if name not in REPLACED_TABLES:
            raise ValueError(f"{name} is not a table the pipeline replaces whole")
        with self.transaction() as con:
            con.register("replacement", table)
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM replacement")
            con.unregister("replacement")

    def duplicate_groups(self) -> dict[str, int]:
        """Image id -> near-duplicate group, for the images in a group."""
        with self.connect() as con:
            return dict(con.execute("SELECT id, group_id FROM near_duplicate_groups").fetchall())

    def previous_cluster_figures(self, model_key: str, run_id: str) -> dict[str, float]:
        """The figures of the latest clusters run of this model other than `run_id`: overall names,
        and `<grounding set>:<name>` per grounding set (timings left out)."""
        with self.connect() as con:
            rows = con.execute(
                """
                WITH last AS (
                    SELECT run_id FROM cluster_metrics WHERE model = ? AND run_id <> ?
                    ORDER BY recorded_at DESC LIMIT 1)
                SELECT grounding_set, metric, value FROM cluster_metrics
                WHERE run_id = (SELECT run_id FROM last) AND metric <> 'seconds'
                """, [model_key, run_id]).fetchall()
        return {(f"{g}:{m}" if g else m): v for g, m, v in rows}


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: list[tuple | list],
                columns: tuple[str, ...] | None = None) -> None:
    """Insert rows, by column name when given, as one Arrow table: DuckDB's executemany runs one
    statement per row, which made the search log's writes most of the search service's CPU time
    (2,000 impressions a second). Columns Arrow cannot type (mixed kinds) go row by row."""
    if not rows:
        return
    names = f" ({', '.join(columns)})" if columns else ""
    try:
        batch = pa.table({f"c{i}": pa.array(values) for i, values in enumerate(zip(*rows, strict=True))})
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        placeholders = ", ".join(["?"] * len(rows[0]))
        con.executemany(f"INSERT INTO {table}{names} VALUES ({placeholders})", rows)
        return
    con.register("_inserted_rows", batch)
    try:
        con.execute(f"INSERT INTO {table}{names} SELECT * FROM _inserted_rows")
    finally:
        con.unregister("_inserted_rows")


def _as_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


CURATION_SCHEMA = """
CREATE TABLE IF NOT EXISTS tags (
    id VARCHAR NOT NULL, tag VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (id, tag));
CREATE TABLE IF NOT EXISTS queries (
    query_id VARCHAR PRIMARY KEY, served_at TIMESTAMP NOT NULL, endpoint VARCHAR NOT NULL,
    query VARCHAR NOT NULL, tag VARCHAR, k INTEGER, index_version VARCHAR, latency_ms DOUBLE);
CREATE TABLE IF NOT EXISTS impressions (
    query_id VARCHAR NOT NULL, rank INTEGER NOT NULL, id VARCHAR NOT NULL, score DOUBLE);
CREATE TABLE IF NOT EXISTS clicks (
    query_id VARCHAR NOT NULL, id VARCHAR NOT NULL, rank INTEGER, clicked_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS duplicate_keepers (
    id VARCHAR PRIMARY KEY, chosen_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS feedback (
    query_id VARCHAR NOT NULL, query VARCHAR NOT NULL, id VARCHAR NOT NULL,
    relevant BOOLEAN NOT NULL, recorded_at TIMESTAMP NOT NULL);
CREATE VIEW IF NOT EXISTS ctr_by_rank AS
    SELECT i.rank, count(*) AS impressions, count(c.id) AS clicks,
           count(c.id) / count(*) AS ctr
    FROM impressions i LEFT JOIN (SELECT DISTINCT query_id, id FROM clicks) c
      ON c.query_id = i.query_id AND c.id = i.id
    GROUP BY i.rank ORDER BY i.rank;
CREATE VIEW IF NOT EXISTS ctr_by_query AS
    SELECT q.endpoint, q.query, count(DISTINCT q.query_id) AS searches,
           count(i.id) AS impressions, count(c.id) AS clicks,
           count(c.id) / greatest(count(i.id), 1) AS ctr
    FROM queries q JOIN impressions i ON i.query_id = q.query_id
    LEFT JOIN (SELECT DISTINCT query_id, id FROM clicks) c
      ON c.query_id = i.query_id AND c.id = i.id
    GROUP BY q.endpoint, q.query ORDER BY searches DESC, q.query;
"""
MAX_TAG_LENGTH = 100


# Characters a tag may not hold: control characters (DEL included), line and paragraph
# separators, surrogates, and the bidirectional overrides that make a tag read as another one.
UNPRINTABLE_CATEGORIES = ("Cc", "Cs", "Zl", "Zp")
BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Trimmed from both ends with the white space: characters of no width, which only a program sees.
ZERO_WIDTH = "\u00ad\u180e\u200b\u200c\u200d\u2060\ufeff"
# What prints nothing on its own: spaces, format characters, marks with no letter to sit on, and
# the letters that are blank by design (Hangul fillers, the blank Braille pattern).
INVISIBLE_CATEGORIES = ("Zs", "Cf", "Mn", "Me")
BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def _invisible(char: str) -> bool:
    return (char.isspace() or char in BLANK_LETTERS
            or unicodedata.category(char) in INVISIBLE_CATEGORIES)


def _trimmed(text: str) -> str:
    """`text` without white space and zero-width characters at either end."""
    start, end = 0, len(text)
    while start < end and (text[start].isspace() or text[start] in ZERO_WIDTH):
        start += 1
    while end > start and (text[end - 1].isspace() or text[end - 1] in ZERO_WIDTH):
        end -= 1
    return text[start:end]


def normalize_tag(tag: str) -> str:
    """The one stored form of a tag, so that the same text typed twice is the same tag: Unicode
    NFC (a precomposed "é" and "e" with a combining accent are one tag), trimmed of white space and
    zero-width characters at the ends. ValueError for what would not print as itself: empty,
    over MAX_TAG_LENGTH, holding a control, separator, surrogate or bidirectional override, or
    made only of characters that print nothing. Every path that takes a tag goes through here."""
    normal = _trimmed(unicodedata.normalize("NFC", tag))
    if (not normal or len(normal) > MAX_TAG_LENGTH or all(_invisible(c) for c in normal)
            or any(unicodedata.category(c) in UNPRINTABLE_CATEGORIES or c in BIDI_CONTROLS
                   for c in normal)):
        raise ValueError(f"a tag is 1 to {MAX_TAG_LENGTH} printable characters, got {tag!r}")
    return normal


class CurationDB(MetricsDB):
    """What people add to the collection (tags, clicks, ratings) and the service's search log, in
    a DuckDB file the search service owns.

    It is a separate file from the pipeline's, so the service's writes never wait for a pipeline
    run. The service groups its writes into one short transaction at a time (serving.search_log:
    the functions below run inside it); the pipeline reads the file the same way.
    """

    @staticmethod
    def _ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(CURATION_SCHEMA)

    @staticmethod
    def insert_searches(con: duckdb.DuckDBPyConnection, searches: list[dict]) -> None:
        """Many served result lists: each dict has query_id, served_at, endpoint, query, tag, k,
        index_version, latency_ms and results [(rank, id, score)]."""
        query_rows = [(q["query_id"], q["served_at"], q["endpoint"], q["query"], q.get("tag"),
                       q["k"], q["index_version"], q["latency_ms"]) for q in searches]
        shown = [(q["query_id"], rank, image_id, score)
                 for q in searches for rank, image_id, score in q["results"]]
        insert_rows(con, "queries", query_rows)
        insert_rows(con, "impressions", shown)

    def search_of(self, query_id: str) -> tuple[str, dict[str, int]] | None:
        """The query text of a logged search and the rank of each image it showed."""
        with self.connect() as con:
            found = con.execute("SELECT query FROM queries WHERE query_id = ?", [query_id]).fetchone()
            if found is None:
                return None
            ranks = con.execute("SELECT id, rank FROM impressions WHERE query_id = ?",
                                [query_id]).fetchall()
        return found[0], dict(ranks)

    def latest_ratings(self) -> list[tuple[str, str, bool]]:
        """(query, image id, relevant): the last rating each image got for each query."""
        with self.connect() as con:
            return con.execute("""
                SELECT query, id, arg_max(relevant, recorded_at) FROM feedback
                GROUP BY query, id ORDER BY query, id""").fetchall()

    def chosen_keepers(self) -> set[str]:
        """The images people chose to keep of their near-duplicate groups ("keep this one")."""
        with self.connect() as con:
            return {row[0] for row in con.execute("SELECT id FROM duplicate_keepers").fetchall()}

    def all_tags(self) -> list[tuple[str, str]]:
        """(tag, image id) for every tag."""
        with self.connect() as con:
            return con.execute("SELECT tag, id FROM tags ORDER BY tag, id").fetchall()


def tag_images(con: duckdb.DuckDBPyConnection, ids: list[str], tag: str) -> int:
    """Tag the images (a tag already through `normalize_tag`); returns how many did not have it."""
    before = con.execute("SELECT count(*) FROM tags WHERE tag = ?", [tag]).fetchone()[0]
    if ids:
        now = _now()
        con.executemany("INSERT OR IGNORE INTO tags VALUES (?, ?, ?)",
                        [(i, tag, now) for i in dict.fromkeys(ids)])
    after = con.execute("SELECT count(*) FROM tags WHERE tag = ?", [tag]).fetchone()[0]
    return after - before


def untag_images(con: duckdb.DuckDBPyConnection, ids: list[str], tag: str) -> int:
    """Take the tag off the images; returns how many had it."""
    before = con.execute("SELECT count(*) FROM tags WHERE tag = ?", [tag]).fetchone()[0]
    con.execute("DELETE FROM tags WHERE tag = ? AND id IN (SELECT unnest(?))", [tag, list(ids)])
    after = con.execute("SELECT count(*) FROM tags WHERE tag = ?", [tag]).fetchone()[0]
    return before - after


def choose_keeper(con: duckdb.DuckDBPyConnection, keep: str, members: list[str]) -> int:
    """Record `keep` as the one image of its group (`members`) to keep, replacing an earlier
    choice in that group; returns 1."""
    con.execute("DELETE FROM duplicate_keepers WHERE id IN (SELECT unnest(?))", [list(members)])
    con.execute("INSERT INTO duplicate_keepers VALUES (?, ?)", [keep, _now()])
    return 1


def insert_click(con: duckdb.DuckDBPyConnection, query_id: str, image_id: str,
                 rank: int | None) -> None:
    con.execute("INSERT INTO clicks VALUES (?, ?, ?, ?)", [query_id, image_id, rank, _now()])


def insert_rating(con: duckdb.DuckDBPyConnection, query_id: str, query: str, image_id: str,
                  relevant: bool) -> None:
    con.execute("INSERT INTO feedback VALUES (?, ?, ?, ?, ?)",
                [query_id, query, image_id, relevant, _now()])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)
