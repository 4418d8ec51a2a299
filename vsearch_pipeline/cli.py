"""The `vsearch` command: demo, materialize, search, grounding sets and the Dagster UI."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import click

from vsearch_pipeline.core.layout import HOME_ENV, HomeLayout, home_dir

home_option = click.option(
    "--home", type=click.Path(file_okay=False, path_type=Path), envvar=HOME_ENV,
    default=None, show_default=False,
    help=f"Folder for artifacts, the DuckDB file and the Dagster instance "
         f"[env {HOME_ENV}; default ./.vsearch].",
)


class _Commands(click.Group):
    """The command group; a home or storage that cannot be written (read-only, no permission,
    full) ends any command with one line naming the path, instead of a traceback."""

    def invoke(self, ctx: click.Context):
        from vsearch_pipeline.storage_errors import describe_storage_error

        try:
            return super().invoke(ctx)
        except click.ClickException:  # already the one line
            raise
        except Exception as err:
            message = describe_storage_error(err)
            if message is None:
                raise
            raise click.ClickException(message) from err


class FiniteSeconds(click.ParamType):
    """A positive, finite number of seconds: click's FloatRange lets 'nan' and 'inf' through
    (every comparison with NaN is false)."""

    name = "seconds"

    def convert(self, value, param, ctx) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r} is not a positive, finite number of seconds", param, ctx)
        return seconds


FINITE_SECONDS = FiniteSeconds()


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """vsearch: visual search and curation of image collections, as a Dagster asset pipeline."""


@main.command()
@home_option
def demo(home: Path | None) -> None:
    """Build the embedded demo corpus, materialize every asset, and show one search."""
    from vsearch_pipeline.core.demo import build_demo_corpus
    from vsearch_pipeline.runner import run_pipeline
    from vsearch_pipeline.settings import load_settings, save_settings

    home = home_dir(home)
    images, grounding = build_demo_corpus(HomeLayout(home).demo)
    settings = load_settings(home, {
        "source": {"uri": str(images)},
        "evaluation": {"grounding_sets": [str(grounding)]},
        "clusters": {"min_cluster_size": 3},
    })
    save_settings(home, settings)
    summary = _run_stoppably(lambda: run_pipeline(home, settings, say=_say))
    _report(home, summary)
    query = images / "chelsea" / "crop.jpg"
    click.echo(f"\nExample: {_command()} search --home {home} {query}")
    for row in _search(home, str(query), 5, image=query.read_bytes()):
        click.echo(f"  {row['rank']}. {row['score']:.3f}  {row['path']}")
    click.echo(f"\nOpen the Dagster UI: {_command()} ui --home {home}   (then http://127.0.0.1:3000)")
    click.echo(f"Search in a browser: {_command()} serve --home {home}   (then http://127.0.0.1:8000)")
    sys.exit(0 if summary["success"] else 1)


@main.command()
@home_option
@click.option("--source", help="Folder or s3://bucket/prefix of images (saved in the home).")
@click.option("--endpoint-url", help="S3-compatible endpoint for the source, e.g. http://127.0.0.1:9000.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML settings merged over the home's vsearch.yaml (see README).")
def materialize(home: Path | None, source: str | None, endpoint_url: str | None,
                config_file: Path | None) -> None:
    """Ingest new files from the source as a batch and materialize the whole graph.

    Every setting, the source and `subset.force_include` are checked first: bad ones fail with
    one line per problem, before anything is written to the home."""
    from vsearch_pipeline.settings import load_settings, read_settings_file, save_settings

    home = home_dir(home)
    try:
        overrides = read_settings_file(config_file) if config_file else {}
        given = {k: v for k, v in (("uri", source), ("endpoint_url", endpoint_url)) if v}
        if given and isinstance(overrides.get("source", {}), dict):  # else: refused below
            overrides["source"] = {**overrides.get("source", {}), **given}
        settings = load_settings(home, overrides).check()
    except ValueError as err:  # with the source's problem too: everything wrong in one report
        from vsearch_pipeline.preflight import source_problems

        problems = [str(err), *source_problems(getattr(err, "given", {}))]
        raise click.UsageError("\n".join(problems)) from err
    from vsearch_pipeline.preflight import check_before_work

    try:
        objects = check_before_work(home, settings)
    except ValueError as err:  # no source, or force_include entries that name no file in it
        raise click.ClickException(str(err)) from err
    save_settings(home, settings)
    from vsearch_pipeline.runner import run_pipeline  # imports the asset graph and torch

    try:
        summary = _run_stoppably(lambda: run_pipeline(home, settings, say=_say, objects=objects))
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    _report(home, summary)
    sys.exit(0 if summary["success"] else 1)


@main.command()
@home_option
@click.argument("query")
@click.option("-k", "--k", "k", default=10, show_default=True, type=click.IntRange(1, 1000),
              help="How many results.")
@click.option("--text", "as_text", is_flag=True,
              help="QUERY is words: search by text (see the README's 'Text search').")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def search(home: Path | None, query: str, k: int, as_text: bool, as_json: bool) -> None:
    """Nearest images to QUERY: an image file, the id of an image in the collection, or (with
    --text) words."""
    from vsearch_pipeline.core.decode import ImageError

    image = _query_image(query, as_text)  # before the home and the index: a typo says so at once
    try:
        results = _search(_existing_home(home), query, k, as_text, image)
    except ImageError as err:
        raise click.ClickException(f"{query} is not a usable image ({err.status}): {err}") from err
    except KeyError as err:  # str() of a KeyError is its repr: the message in quotes
        raise click.ClickException(str(err.args[0] if err.args else err)) from err
    except (LookupError, FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    if as_json:
        click.echo(json.dumps({"query": query, "results": results}, indent=2))
        return
    floor = results[0]["floor"] if results else None
    if floor is not None and not any(row["match"] for row in results):
        click.echo(f"  nothing matched well (no score reaches this collection's match floor "
                   f"{floor:.2f}); the closest:")
    for row in results:
        if floor is not None and row["rank"] > 1 and not row["match"] and results[
                row["rank"] - 2]["match"]:
            click.echo(f"  --- below this collection's match floor {floor:.2f}: weaker results ---")
        matched = f"  ({row['matched']})" if row.get("matched") else ""
        click.echo(f"{row['rank']:>3}. {row['score']:.4f}  {row['id']}  {row['path']}{matched}")


# What a QUERY that names a file ends with; an image id is hex digits, never with a dot.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".tif", ".tiff",
                            ".webp", ".heic", ".heif", ".avif", ".jxl", ".ppm", ".pgm", ".ico"})


def _query_image(query: str, as_text: bool) -> bytes | None:
    """The bytes of the image file QUERY names, or None for an image id or words. Decided from
    the name alone, before anything heavy loads: a QUERY that looks like a path (a path
    separator, an image file's extension, or an existing folder) but is not a file is refused
    with what it is, rather than looked up as an id."""
    if as_text:
        if not query.strip():
            raise click.ClickException("the text query is empty: give some words to search for")
        return None
    path = Path(query)
    if path.is_dir():
        raise click.ClickException(f"{query} is a folder, not an image file: give one image, "
                                   "or the id of an image in the collection")
    if path.is_file():
        try:
            return path.read_bytes()
        except OSError as err:
            raise click.ClickException(f"cannot read {query}: {err.strerror or err}") from err
    looks_like_a_path = any(sep and sep in query for sep in (os.sep, os.altsep, "/"))
    if looks_like_a_path or path.suffix.lower() in IMAGE_SUFFIXES:
        raise click.ClickException(f"no such file: {query}")
    return None


@main.command()
@home_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. On loopback (the default) the person at this machine "
                   "may tag, name and pin from the page without a key while the home has no keys "
                   "file; on any other address (0.0.0.0, a LAN address) writes need an API key "
                   "(`vsearch api-key create NAME`) and are refused until one exists.")
@click.option("--port", default=8000, show_default=True)
def serve(home: Path | None, host: str, port: int) -> None:
    """Start the search service and its web page (FastAPI; API docs at /docs) on the home's
    latest index. Prints one line when it answers, with its URL; stops on Ctrl-C or SIGTERM."""
    home = _existing_home(home)  # before the imports, which take seconds
    from serving.app import app_for_home, serve_until_stopped
    from serving.auth import is_loopback
    from vsearch_pipeline.settings import load_settings

    local = is_loopback(host)
    app = app_for_home(home, load_settings(home), local_writes=local)
    click.echo(f"vsearch: {_writes_line(app.state.service.writes.mode(), host)}", err=True)
    url = _url(host, port)
    serve_until_stopped(app, host, port, lambda line: click.echo(f"vsearch: {line}", err=True),
                        lambda: f"serving {_served(app)} at {url}  (API docs {url}docs; Ctrl-C "
                                "stops)")


def _url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def _writes_line(mode: str, host: str) -> str:
    if mode == "this_machine":
        return ("no API keys file, listening on loopback only: tagging and naming from this "
                "machine need no key")
    if mode == "off":
        return (f"listening on {host}, reachable from other machines: writes (tags, names, pins) "
                "are refused until an API key exists (`vsearch api-key create NAME`)")
    return "writes need an API key from the keys file (`vsearch api-key create NAME` adds one)"


def _served(app) -> str:
    live = app.state.service.holder.live
    if live is None:
        return f"no index yet ({app.state.service.holder.last_error or 'none materialized'})"
    return f"{live.searcher.loaded.index.ntotal} images (index {live.version})"


@main.command()
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--flagged", type=click.Choice(["blurry", "dark", "bright", "tiny"]),
              help="List the files the insight asset flagged so, with their quality figures "
                   "(thresholds: the insight settings).")
def metrics(home: Path | None, as_json: bool, flagged: str | None) -> None:
    """The latest figures from the home's DuckDB file: per-partition counts and timings, the
    index, retrieval quality per grounding set, clusters, near-duplicate groups, and the
    insight (label mistakes, odd ones, files flagged blurry, dark, bright or tiny)."""
    from vsearch_pipeline.core.report import flagged_files, format_table, latest_figures

    db = HomeLayout(_existing_home(home)).metrics_db
    if not db.exists():
        raise click.ClickException(f"no metrics yet at {db}: run `vsearch materialize` first")
    if flagged:
        try:
            report = {f"{flagged} files": flagged_files(str(db), flagged)}
        except LookupError as err:
            raise click.ClickException(str(err)) from err
    else:
        report = latest_figures(str(db))
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    for name, section in report.items():
        click.echo(f"\n{name.replace('_', ' ')}")
        click.echo(format_table(section["columns"], section["rows"]))


@main.command()
@home_option
@click.option("--export", "export", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write the files to drop as CSV: every group's files but the one kept (or, "
                   "with --between, the files of B that duplicate A).")
@click.option("--between", nargs=2, metavar="A B",
              help="Two parts of the collection, each a tag or a folder (e.g. train test): list "
                   "the files of B that duplicate an image of A.")
def duplicates(home: Path | None, export: Path | None, between: tuple[str, str] | None) -> None:
    """The near-duplicate groups the pipeline found, each with the file to keep (chosen in the
    web page, else by the keeper rule: most pixels, least compression, the group's format,
    earliest seen), and the files to drop."""
    from vsearch_pipeline.duplicates import files_to_drop, load_duplicates, write_csv

    try:
        found = load_duplicates(_existing_home(home))
        rows, said = files_to_drop(found, between)
    except (LookupError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    rule = found.rule
    thresholds = rule.get("thresholds") or {}
    crops = rule.get("partial_copies") or {}
    click.echo(f"groups: {found.version}, method {rule['method']}, Hamming threshold "
               f"{rule['hamming_threshold']}" + (
                   f", contrast {thresholds['contrast']:.3f}, cosine floor "
                   f"{thresholds['cosine_floor']:.3f}" if thresholds else "") + (
                   f", crops checked ({crops['checks_per_image']} pairs per image)"
                   if crops else ""))
    click.echo(said)
    if export is not None:
        write_csv(rows, export)
        click.echo(f"written to {export}")
        return
    for row in rows[:20]:
        click.echo(f"  drop {row['drop_path']}  (keep {row['keep_path']}: {row['reason']})")
    if len(rows) > 20:
        click.echo(f"  ... and {len(rows) - 20} more: --export FILE writes them all")


@main.command()
@home_option
@click.option("--html", "html_file", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write the report as one self-contained HTML page (pictures inline, no "
                   "script, nothing fetched) to this file.")
def report(home: Path | None, html_file: Path | None) -> None:
    """The collection in one report: counts and statuses, duplicates and what dropping them
    saves, clusters with examples and the map, the odd ones, likely label mistakes, image
    quality, and search quality per grounding set. Without --html, the figures as text."""
    from vsearch_pipeline.collection_report import gather_report
    from vsearch_pipeline.core.report_page import render_report
    from vsearch_pipeline.settings import load_settings

    home = _existing_home(home)
    data = gather_report(home, load_settings(home))
    if html_file is not None:
        html_file.write_text(render_report(data), encoding="utf-8")
        click.echo(f"written to {html_file}")
        return
    click.echo(data.title)
    for heading, pairs in (("collection", data.counts),
                           ("file statuses", [(k, f"{v:,}") for k, v in data.statuses.items()]),
                           ("near-duplicates", list(data.duplicates.items())),
                           ("clusters", list(data.clusters.items())),
                           ("image quality (files flagged)",
                            [(k, f"{v:,}") for k, v in data.quality_counts.items()])):
        click.echo(f"\n{heading}")
        for what, value in pairs:
            click.echo(f"  {what}: {value}")
    click.echo(f"\nodd ones: {', '.join(p.caption.split(' · ')[0] for p in data.odd_ones[:5])}")
    click.echo(f"likely label mistakes: {len(data.label_mistakes)} listed")
    for note in data.notes:
        click.echo(f"note: {note}")
    click.echo("\n--html FILE writes the page, with pictures and charts")


@main.command("grounding-from-folders")
@click.argument("source")
@click.option("--depth", default=1, show_default=True, help="Folder levels that name a group.")
@click.option("--endpoint-url", help="S3-compatible endpoint for an s3:// source.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def grounding_from_folders_command(source: str, depth: int, endpoint_url: str | None,
                                   output: Path) -> None:
    """Write a grounding set that groups the images of SOURCE by folder."""
    from vsearch_pipeline.core.grounding import format_grounding, grounding_from_folders
    from vsearch_pipeline.core.sources import list_source

    rows = grounding_from_folders([o.path for o in list_source(source, endpoint_url)], depth)
    output.write_text(format_grounding(rows))
    click.echo(f"{len(rows)} images in {len({g for g, _ in rows})} groups -> {output}")


@main.command()
@home_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=3000, show_default=True)
def ui(home: Path | None, host: str, port: int) -> None:
    """Start the Dagster UI and the Dagster daemon on the home's instance, until Ctrl-C.

    The daemon runs the sensors (new files in the source become a batch and a run, and the
    index follows), the nightly recluster, the weekly index rebuild, and the runs launched from
    the UI. Prints one line when the UI answers, with its URL; their output goes to
    <home>/logs/webserver.log and daemon.log. Ctrl-C or SIGTERM stops both."""
    home = _existing_home(home)
    from vsearch_pipeline import dagster_servers as ds

    if ds.answers(host, port):
        raise click.ClickException(f"something already listens on {host}:{port} (another "
                                   "`vsearch ui`?): stop it or give another --port")
    url = _url(host, port)
    ready = (f"Dagster UI at {url} with the daemon: {_daemon_does(home)}; logs in "
             f"{HomeLayout(home).logs}; Ctrl-C stops")
    _run_dagster(home, [ds.webserver(home, host, port), ds.daemon(home)],
                 lambda: ds.answers(host, port) and _said(ready))


@main.command()
@home_option
def daemon(home: Path | None) -> None:
    """Run the Dagster daemon alone on the home's instance (a server without the UI), until
    Ctrl-C or SIGTERM: the sensors, the schedules and the run queue. The same as
    `dagster-daemon run -w workspace.yaml` with DAGSTER_HOME=<home>/dagster and VSEARCH_HOME
    set. Its output goes to <home>/logs/daemon.log."""
    home = _existing_home(home)
    from vsearch_pipeline import dagster_servers as ds

    server = ds.daemon(home)
    ready = f"Dagster daemon on {home}: {_daemon_does(home)}; log {server.log}; Ctrl-C stops"
    _run_dagster(home, [server], lambda: _said(ready))


def _daemon_does(home: Path) -> str:
    from vsearch_pipeline.dagster_servers import what_the_daemon_does
    from vsearch_pipeline.settings import load_settings

    return what_the_daemon_does(load_settings(home))


def _said(line: str) -> bool:
    click.echo(f"vsearch: {line}", err=True)
    return True


def _run_dagster(home: Path, servers, announce) -> None:
    """Run Dagster's servers until a signal (exit 0, one line) or until one of them fails (its
    status, its name and the end of its log)."""
    from vsearch_pipeline.dagster_servers import dagster_env, log_tail
    from vsearch_pipeline.interrupts import run_until_stopped

    ended = run_until_stopped(servers, dagster_env(home), announce=announce)
    if ended is None:
        _said("stopped")
        return
    server, status = ended
    _said(f"{server.name} exited with status {status}, so the rest was stopped; the end of "
          f"{server.log}:\n{log_tail(server.log)}")
    sys.exit(status or 1)


def _existing_home(home: Path | None) -> Path:
    """The home a reading command (search, serve) needs: one that `materialize` made. Checked
    first, so that a mistyped --home is said as such and no empty home is left behind."""
    home = home_dir(home)
    if not home.is_dir():
        raise click.ClickException(f"no vsearch home at {home}: run `vsearch materialize --home "
                                   f"{home} --source <images>` first, or give the right --home")
    return home


def _run_stoppably(work):
    """Run the pipeline so that Ctrl-C or SIGTERM stops it at its next safe point: then one
    line and the shell's exit status for the signal (130 for Ctrl-C), no traceback."""
    from vsearch_pipeline.interrupts import Interrupted, run_stoppably

    try:
        return run_stoppably(work, say=_say)
    except Interrupted as stop:
        click.echo(f"vsearch: {stop}: the run was stopped and what it finished is kept; run the "
                   "same command again to resume", err=True)
        sys.exit(stop.exit_status)


def _search(home: Path, query: str, k: int, as_text: bool = False,
            image: bytes | None = None) -> list[dict]:
    """The k nearest to QUERY (or to `image`, its file's bytes) in the home's newest index, each
    saying whether it reaches the collection's match floor (`match`, `floor`). Only a query by
    image or text loads a model; a query by id reads the index alone. An image is
    decoded before the index and the model load, so a broken file is said in a second."""
    from vsearch_pipeline.core.catalog import ArtifactRecords
    from vsearch_pipeline.core.decode import decode_rgb
    from vsearch_pipeline.core.storage import ArtifactStore
    from vsearch_pipeline.search import Searcher
    from vsearch_pipeline.settings import load_settings

    if image is not None:
        decode_rgb(image)  # an ImageError names what is wrong with the file
    settings = load_settings(home)
    store = ArtifactStore(settings.artifacts_root(home), settings.storage.endpoint_url)
    build = ArtifactRecords(store, settings.model.spec.key).index_build()
    searcher = Searcher.from_build(store, build, settings.source.endpoint_url)
    if as_text:
        results = searcher.by_text(searcher.embed_text(query), k)
    elif image is not None:
        results = searcher.by_image(image, k)
    else:
        results = searcher.by_id(query, k)
    floor = searcher.match_floor("text" if as_text else "image")
    return [{**row, "match": floor is None or row["score"] >= floor, "floor": floor}
            for row in results]


def _command() -> str:
    """How to call this program again: its name when it is on PATH, else its full path."""
    found = shutil.which("vsearch")
    return "vsearch" if found and Path(found).resolve() == Path(sys.argv[0]).resolve() else sys.argv[0]


def _say(message: str) -> None:
    click.secho(f"==> {message}", fg="cyan", err=True)


def _report(home: Path, summary: dict) -> None:
    """Time per asset, where the results are, and the latest figures from the DuckDB file."""
    import duckdb

    from vsearch_pipeline.core.report import format_table
    from vsearch_pipeline.settings import load_settings

    click.echo("\nWall time per asset:")
    for row in summary["timings"]:
        click.echo(f"  {row['asset']:<24} {row['partition']:<8} {row['seconds']:>9.2f} s")
    db = HomeLayout(home).metrics_db
    click.echo(f"\nArtifacts:  {load_settings(home).artifacts_root(home)}\nMetrics DB: {db}  (duckdb {db})")
    shown = ("precision@1", "recall@10", "map@10", "ndcg@10", "duplicate_pair_recall",
             "duplicate_pair_precision")
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT grounding_set, metric, round(value, 3) FROM retrieval_metrics "
            "WHERE run_id = (SELECT run_id FROM retrieval_metrics ORDER BY recorded_at DESC "
            "LIMIT 1) AND metric IN ('precision@1', 'recall@10', 'map@10', 'ndcg@10', "
            "'duplicate_pair_recall', 'duplicate_pair_precision') ORDER BY grounding_set").fetchall()
    figures: dict[str, dict[str, float]] = {}
    for grounding_set, metric, value in rows:
        figures.setdefault(grounding_set, {})[metric] = value
    click.echo("\nSearch quality per grounding set (and per case of its images):")
    click.echo(format_table(["set", "P@1", "R@10", "mAP@10", "nDCG@10", "dup. recall",
                             "dup. precision"],
                            [[name, *(values.get(m) for m in shown)]
                             for name, values in figures.items()]))


@main.command()
@home_option
@click.argument("url_list", type=click.File("r", encoding="utf-8"))
@click.option("--to", "target", required=True,
              help="Where the images go: a folder or s3://bucket/prefix (the collection's source, "
                   "or a folder under it, so the sensor picks them up).")
@click.option("--endpoint-url", help="S3-compatible endpoint for an s3:// target.")
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 256),
              help="URLs fetched at the same time.")
@click.option("--retries", default=3, show_default=True, type=click.IntRange(0, 20),
              help="Tries after the first, with exponential backoff, for connection errors, "
                   "timeouts, 429 and 5xx (never for other 4xx).")
@click.option("--timeout", default=30.0, show_default=True, type=FINITE_SECONDS,
              help="Seconds one attempt may take, from request to last byte.")
@click.option("--max-bytes", default=50_000_000, show_default=True, type=click.IntRange(1),
              help="Larger bodies are cut off and recorded as too_large.")
@click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON-lines record of every URL [default: <home>/downloads/<hash of --to>.jsonl].")
def download(home: Path | None, url_list, target: str, endpoint_url: str | None, concurrency: int,
             retries: int, timeout: float, max_bytes: int, manifest_path: Path | None) -> None:
    """Fetch the images listed in URL_LIST (one URL per line, '#' comments; '-' for stdin) into
    --to, named by content (<sha256[:16]>.<ext>) so the same image lands once.

    Every URL's outcome is appended to the manifest as it finishes; run the same command again
    after an interruption and it skips the URLs already done. Exits non-zero only when not one
    image could be fetched, or on bad arguments.
    """
    from vsearch_pipeline.core.download import DownloadOptions, default_manifest, format_summary
    from vsearch_pipeline.core.download import download as fetch_all

    options = DownloadOptions(concurrency=concurrency, retries=retries, timeout=timeout,
                              max_bytes=max_bytes)
    manifest_path = manifest_path or default_manifest(home_dir(home), target)
    _say(f"downloading into {target}; manifest {manifest_path}")
    try:
        summary = fetch_all(url_list, target, manifest_path, options, endpoint_url, say=_say)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: finished URLs are in {manifest_path}; run the same command "
                   "again to go on", err=True)
        sys.exit(130)
    for line in format_summary(summary):
        click.echo(line)
    sys.exit(1 if summary.nothing_fetched else 0)


@main.group("api-key")
def api_key() -> None:
    """API keys for the search service's writes (tags, pins, ingest; reads and clicks when private)."""


@api_key.command("create")
@home_option
@click.argument("name")
@click.option("--keys-file", type=click.Path(dir_okay=False, path_type=Path),
              help="The keys file [default: $VSEARCH_API_KEYS_FILE, else the home's "
                   "serving.api_keys_file, else <home>/api-keys].")
def api_key_create(home: Path | None, name: str, keys_file: Path | None) -> None:
    """Make a new key called NAME: its SHA-256 is appended to the keys file (never the key) and
    the key is printed once. Revoke it by deleting its line."""
    from serving.auth import create_key, keys_file_path
    from vsearch_pipeline.settings import load_settings

    home = home_dir(home)
    try:
        setting = load_settings(home).serving.api_keys_file
    except ValueError:  # a broken vsearch.yaml must not stop a key being made with --keys-file
        setting = None
    configured = keys_file_path(setting)
    keys_file = keys_file or configured or HomeLayout(home).api_keys
    try:
        key = create_key(keys_file, name)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    click.echo(f"key {name!r} added to {keys_file}; keep it now, it is not stored anywhere:", err=True)
    read_by_service = configured or HomeLayout(home).api_keys
    if read_by_service.resolve() != keys_file.resolve():
        click.echo(f"(the service reads the keys file named by serving.api_keys_file or "
                   f"VSEARCH_API_KEYS_FILE: point one of them at {keys_file})", err=True)
    else:
        click.echo(f"(`vsearch serve --home {home}` reads this file, a running one at once; from "
                   "now on every write needs a key, from this machine too)", err=True)
    click.echo(key)


@main.command()
@home_option
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
def backup(home: Path | None, dest: Path) -> None:
    """Copy the home into DEST, a new folder: the Dagster instance, the DuckDB files, the
    settings and the artifacts (when they live in the home), consistently, while the pipeline and
    the service keep running. See docs/operations.md."""
    from vsearch_pipeline.core.backup import backup_home
    from vsearch_pipeline.settings import load_settings

    home = home_dir(home)
    storage_root = load_settings(home).artifacts_root(home)
    try:
        manifest = backup_home(home, dest, storage_root, say=_say)
    except (FileNotFoundError, FileExistsError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"backup of {home} in {dest}: {len(manifest['files'])} files")


@main.command()
@home_option
@click.argument("backup_dir", metavar="BACKUP", type=click.Path(exists=True, file_okay=False,
                                                                path_type=Path))
def restore(home: Path | None, backup_dir: Path) -> None:
    """Copy a backup made by `vsearch backup` back into a home that does not exist yet or is empty
    (default: the folder it was taken from; move a damaged home aside first)."""
    from vsearch_pipeline.core.backup import restore_home

    try:
        restored = restore_home(backup_dir, home.resolve() if home else None, say=_say)
    except (FileExistsError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"restored into {restored}: start the service with `vsearch serve --home {restored}`")
