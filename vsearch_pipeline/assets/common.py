"""What the asset shells share: the partitions, artifact paths, run identity and readable metadata."""

from __future__ import annotations

import contextlib
import datetime as dt
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np
from dagster import (
    AssetExecutionContext,
    Backoff,
    DynamicPartitionsDefinition,
    Failure,
    Jitter,
    MetadataValue,
    RetryPolicy,
)

from vsearch_pipeline.core.artifacts import NoEmbeddingsError, load_embeddings
from vsearch_pipeline.core.names import shown
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.interrupts import stop_step_if_requested

ingest_batches = DynamicPartitionsDefinition(name="ingest_batches")

STORAGE_RETRY = RetryPolicy(max_retries=3, delay=2, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)
"""Every asset reads or writes the source and artifact storage, which may be S3 or a network
disk: a step that fails is tried again 2, 4 and 8 seconds later (each attempt already retries
a request for about 10 s inside s3fs and botocore), so an outage of half a minute costs time,
not the run. Repeating a step is safe: artifacts are written whole under their final names and
DuckDB writes are transactions, so a failed attempt leaves nothing that the next one reads."""


@contextlib.contextmanager
def fail_without_embeddings() -> Iterator[None]:
    """No embeddings at all (`NoEmbeddingsError`) is a failure that no retry mends, so the step
    fails at once with its reason (retries are for storage that may come back)."""
    try:
        yield
    except NoEmbeddingsError as err:
        raise Failure(description=str(err), allow_retries=False) from None


def collection_embeddings(store: ArtifactStore, model_key: str) -> tuple[list[str], np.ndarray, str]:
    """`load_embeddings` for a collection step (`fail_without_embeddings`)."""
    with fail_without_embeddings():
        return load_embeddings(store, model_key)


def artifact_version(context: AssetExecutionContext) -> str:
    """Sortable and unique: UTC time to the microsecond plus the start of the run's id. (To
    the second, two versions made within one second sorted by their random run ids, and the
    newer could read as the older: seen once runs got fast enough.)"""
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%fZ}-{context.run.run_id[:8]}"


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version and, in a git checkout, the commit: where a result came from."""
    version = package_version("vsearch")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit}" if commit else version


def run_keys(context: AssetExecutionContext) -> dict[str, str | None]:
    partition = context.partition_key if context.has_partition_key else None
    return {"run_id": context.run.run_id, "asset": context.asset_key.to_user_string(),
            "partition": partition}


def setting(value: object) -> MetadataValue:
    """A value that is the same run after run (a batch size, a dimension, a bound): text, so
    that the asset page lists it instead of plotting a flat line as if it were a measurement."""
    return MetadataValue.text(str(value))


def markdown_table(rows: Sequence[dict], limit: int = 20) -> MetadataValue:
    """A Markdown table of the first `limit` rows, for the Dagster UI."""
    if not rows:
        return MetadataValue.md("_(none)_")
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows[:limit]:
        lines.append("| " + " | ".join(_cell(row[h]) for h in headers) + " |")
    if len(rows) > limit:
        lines.append(f"\n_{len(rows) - limit} more rows not shown_")
    return MetadataValue.md("\n".join(lines))


def _cell(value: object) -> str:
    """A value on one line of the table: a file name may hold a newline or another control
    character (`shown` escapes those)."""
    if isinstance(value, float):
        return f"{value:.4f}"
    return shown(str(value)).replace("|", "\\|")


def progress_logger(context: AssetExecutionContext, what: str, every: float = 0.1
                    ) -> Callable[[int, int], None]:
    """A progress callback that logs each `every` share of the work, with the rate. Each call
    is also where a long step stops when the command line asked it to (Ctrl-C: interrupts.py)."""
    start = time.perf_counter()
    state = {"next": every}

    def report(done: int, total: int) -> None:
        stop_step_if_requested(context.instance, context.run.run_id)
        if total and (done / total >= state["next"] or done == total):
            rate = done / max(time.perf_counter() - start, 1e-9)
            context.log.info(f"{what}: {done}/{total} ({done / total:.0%}, {rate:.1f}/s)")
            state["next"] = done / total + every

    return report


def refit_reason(previous: dict | None, wanted: dict, model_version: str, count: int,
                 growth_ratio: float) -> str | None:
    """Why an artifact fitted on the collection (a transform, a projection head) must be fitted
    again, or None to keep `previous`: the rule that also retrains the index."""
    if previous is None:
        return "no earlier fit for this model"
    if previous["settings"] != wanted:
        return "settings changed"
    if previous["model_version"] != model_version:
        return "model version changed"
    grown = count / max(int(previous["fitted_on"]), 1) - 1
    if grown > growth_ratio:
        return f"the collection grew {grown:.0%} since the fit (limit {growth_ratio:.0%})"
    return None
