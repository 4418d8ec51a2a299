"""`vsearch report`: the collection's figures gathered from a home (manifests, duplicate groups,
clusters and their map, the insight rows, DuckDB) for one page a person can read
(core.report_page renders it)."""

from __future__ import annotations

import base64
import datetime as dt
import io
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from vsearch_pipeline.core.artifacts import load_manifests
from vsearch_pipeline.core.catalog import latest_clusters, latest_insight
from vsearch_pipeline.core.decode import ImageError, decode_rgb
from vsearch_pipeline.core.duplicate_keepers import drop_rows
from vsearch_pipeline.core.image_quality import QUALITY_FLAGS
from vsearch_pipeline.core.layout import HomeLayout
from vsearch_pipeline.core.report import latest_figures
from vsearch_pipeline.core.report_page import Histogram, Picture, ReportData
from vsearch_pipeline.core.sources import read_object
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.settings import Settings

THUMBNAIL_SIDE = 120
EXAMPLES = 6  # pictures per cluster or duplicate group
LISTED = 12  # odd ones and label mistakes shown


class Thumbnails:
    """Inline thumbnails of originals, read from the source (a moved file says so instead)."""

    def __init__(self, where: dict[str, tuple[str, str]], endpoint_url: str | None) -> None:
        self.where, self.endpoint_url = where, endpoint_url

    def picture(self, image_id: str, caption: str | None = None) -> Picture:
        uri, path = self.where.get(image_id, (None, image_id))
        caption = caption or path
        if uri is None:
            return Picture(caption, None, "no file")
        try:
            image = decode_rgb(read_object(uri, self.endpoint_url), min_size=THUMBNAIL_SIDE)
        except (OSError, ImageError) as err:
            return Picture(caption, None, f"not readable: {type(err).__name__}")
        image.thumbnail((THUMBNAIL_SIDE * 2, THUMBNAIL_SIDE * 2))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=70)
        return Picture(caption, "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode())


def gather_report(home: Path, settings: Settings) -> ReportData:
    store = ArtifactStore(settings.artifacts_root(home))
    manifest = load_manifests(store)
    usable = manifest.filter(pc.equal(manifest.column("status"), "ok"))
    rows = usable.select(["id", "uri", "path", "bytes", "width", "height", "format",
                          "partition"]).to_pylist()
    where: dict[str, tuple[str, str]] = {}
    for r in rows:
        where.setdefault(r["id"], (r["uri"], r["path"]))
    thumbs = Thumbnails(where, settings.source.endpoint_url)
    statuses: dict[str, int] = {}
    for status in manifest.column("status").to_pylist():
        statuses[status] = statuses.get(status, 0) + 1
    data = ReportData(
        title=f"vsearch: {settings.source.uri or home}",
        generated_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        counts=[("files", f"{len(manifest):,}"), ("usable files", f"{len(usable):,}"),
                ("distinct images", f"{len(where):,}"),
                ("bytes of the usable files", f"{sum(r['bytes'] or 0 for r in rows):,}"),
                ("ingest batches", f"{len(set(manifest.column('partition').to_pylist())):,}")],
        statuses=statuses)
    _duplicates(data, home, thumbs)
    _clusters(data, store, settings, thumbs)
    _insight(data, store, settings, thumbs)
    _quality(data, usable, settings)
    db = HomeLayout(home).metrics_db
    if db.exists():
        retrieval = latest_figures(str(db))["retrieval"]
        data.search_quality = (retrieval["columns"], retrieval["rows"])
    return data


def _duplicates(data: ReportData, home: Path, thumbs: Thumbnails) -> None:
    from vsearch_pipeline.duplicates import load_duplicates

    try:
        found = load_duplicates(home)
    except LookupError as err:
        data.notes.append(str(err))
        return
    dropped = drop_rows(found.groups, found.files, found.suggested, found.chosen)
    size = {(f.id, f.uri): f.bytes for files in found.files.values() for f in files}
    saved = sum(size.get((r["drop_id"], r["drop_uri"]), 0) for r in dropped)
    data.duplicates = {
        "groups": f"{len(found.groups):,}",
        "images in groups": f"{sum(len(g) for g in found.groups):,}",
        "files to drop (one kept in each group)": f"{len(dropped):,}",
        "bytes saved by dropping them": f"{saved:,}",
        "rule": str(found.rule.get("method", "")),
    }
    data.duplicate_examples = [[thumbs.picture(i) for i in group[:EXAMPLES]]
                               for group in found.groups[:5]]


def _clusters(data: ReportData, store: ArtifactStore, settings: Settings,
              thumbs: Thumbnails) -> None:
    path = latest_clusters(store, settings.model.spec.key)
    if path is None:
        data.notes.append("no clusters yet: run `vsearch materialize`")
        return
    table = store.read_parquet(path)
    labels = np.array(table.column("label").to_pylist())
    ids = table.column("id").to_pylist()
    found = labels[labels >= 0]
    sizes = np.bincount(found) if len(found) else np.zeros(0, int)
    data.clusters = {"clusters": f"{int((sizes > 0).sum()):,}",
                     "outliers (in no cluster)": f"{int((labels < 0).sum()):,} "
                                                 f"({(labels < 0).mean():.1%})"}
    for label in np.argsort(-sizes, kind="stable")[:8]:
        members = [ids[i] for i in np.flatnonzero(labels == label)[:EXAMPLES]]
        data.cluster_examples.append((f"Cluster {label} · {sizes[label]} images",
                                      [thumbs.picture(i) for i in members]))
    picture = path.removesuffix(".parquet") + ".map.png"
    if store.exists(picture):
        data.map_data_uri = "data:image/png;base64," + base64.b64encode(
            store.read_bytes(picture)).decode()


def _insight(data: ReportData, store: ArtifactStore, settings: Settings,
             thumbs: Thumbnails) -> None:
    path = latest_insight(store, settings.model.spec.key)
    if path is None:
        data.notes.append("no insight yet (odd ones, label mistakes): run `vsearch materialize`")
        return
    rows = store.read_parquet(path).to_pylist()
    odd = sorted(rows, key=lambda r: -r["outlier"])[:LISTED]
    data.odd_ones = [thumbs.picture(r["id"], f"{r['path']} · farther out than "
                                             f"{r['outlier']:.1%}") for r in odd]
    mistakes = sorted((r for r in rows if r["label_flagged"]),
                      key=lambda r: -r["label_confidence"])
    data.label_mistakes = [thumbs.picture(r["id"], f"{r['path']}: {r['label']} → "
                                                   f"{r['suggested_label']} "
                                                   f"({r['label_confidence']:.0%})")
                           for r in mistakes[:LISTED]]
    if len(mistakes) > LISTED:
        data.notes.append(f"{len(mistakes) - LISTED} more likely label mistakes: the web page's "
                          "Insight tab lists them all")


def _quality(data: ReportData, usable, settings: Settings) -> None:
    thresholds = settings.insight.thresholds()
    rows = usable.select(["sharpness", "brightness", "width", "height", "jpeg_quality"]
                         ).to_pylist()
    measured = [r for r in rows if r["sharpness"] is not None]
    data.quality_counts = {flag: sum(flag in thresholds.flags(r) for r in measured)
                           for flag in QUALITY_FLAGS}
    if len(measured) < len(rows):
        data.notes.append(f"{len(rows) - len(measured)} files were read before quality figures "
                          "existed (their batches are never read again)")
    if not measured:
        return
    figure = {name: np.array([r[name] if r[name] is not None else np.nan for r in measured],
                             float) for name in ("sharpness", "brightness", "jpeg_quality")}
    shorter = np.array([min(r["width"], r["height"]) for r in measured], float)
    data.histograms = [
        Histogram("sharpness (log10 of the Laplacian's variance)",
                  np.log10(np.maximum(figure["sharpness"], 1e-3)), np.linspace(0, 5, 26),
                  float(np.log10(thresholds.blurry_below))),
        Histogram("brightness (mean grey level)", figure["brightness"], np.linspace(0, 1, 21),
                  thresholds.dark_below),
        Histogram("JPEG quality", figure["jpeg_quality"], np.linspace(0, 100, 21)),
        Histogram("shorter side (px)", np.minimum(shorter, 2000), np.linspace(0, 2000, 21),
                  float(thresholds.tiny_below), " px"),
    ]
