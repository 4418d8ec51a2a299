"""The collection report as one self-contained HTML page: every picture inline (data: URIs),
charts as inline SVG, no script and nothing fetched, so the file can be mailed or archived and
still reads the same. Pure: it renders what `vsearch_pipeline.collection_report` gathered."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vsearch_pipeline.core.report import cell_text


@dataclass(frozen=True)
class Picture:
    """An image shown in the report: a caption and its thumbnail as a data: URI (None: not
    readable any more, the caption says why)."""

    caption: str
    data_uri: str | None
    note: str = ""


@dataclass(frozen=True)
class Histogram:
    title: str
    values: np.ndarray  # the figure of each file
    edges: np.ndarray  # bin edges
    threshold: float | None = None  # drawn as a line: where a flag starts
    unit: str = ""


@dataclass
class ReportData:
    title: str
    generated_at: str
    counts: list[tuple[str, str]]  # (what, how many), in order
    statuses: dict[str, int]
    duplicates: dict[str, str] = field(default_factory=dict)  # figure -> text
    duplicate_examples: list[list[Picture]] = field(default_factory=list)
    clusters: dict[str, str] = field(default_factory=dict)
    cluster_examples: list[tuple[str, list[Picture]]] = field(default_factory=list)
    map_data_uri: str | None = None
    odd_ones: list[Picture] = field(default_factory=list)
    label_mistakes: list[Picture] = field(default_factory=list)
    quality_counts: dict[str, int] = field(default_factory=dict)
    histograms: list[Histogram] = field(default_factory=list)
    search_quality: tuple[list[str], list[list]] = ((), ())  # columns, rows
    notes: list[str] = field(default_factory=list)  # what could not be shown, and why


STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2330;
padding:0 1rem}h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #dde;
padding-bottom:.2rem}.muted{color:#667}table{border-collapse:collapse;margin:.6rem 0}
td,th{border:1px solid #dde;padding:.25rem .6rem;text-align:left}th{background:#f3f4f8}
td.n{text-align:right;font-variant-numeric:tabular-nums}.pics{display:flex;flex-wrap:wrap;
gap:.6rem}figure{margin:0;width:120px}figure img{width:120px;height:120px;object-fit:cover;
border-radius:4px;background:#eee}figcaption{font-size:12px;word-break:break-all}
.none{width:120px;height:120px;display:flex;align-items:center;justify-content:center;
background:#eee;color:#889;font-size:12px;text-align:center}.row{margin:.8rem 0}
.charts{display:flex;flex-wrap:wrap;gap:1.5rem}.map img{max-width:100%;border:1px solid #dde}
"""


def render_report(data: ReportData) -> str:
    """The whole page."""
    sections = [
        f"<h1>{_e(data.title)}</h1><p class='muted'>Generated {_e(data.generated_at)} by "
        "vsearch report</p>",
        "<h2>The collection</h2>" + _pairs(data.counts) + _pairs(
            [(status, f"{count:,}") for status, count in sorted(data.statuses.items())],
            head=("file status", "files")),
        "<h2>Near-duplicates</h2>" + _pairs(list(data.duplicates.items()))
        + "".join(f"<div class='row'>{_pictures(group)}</div>"
                  for group in data.duplicate_examples),
        "<h2>Clusters</h2>" + _pairs(list(data.clusters.items()))
        + "".join(f"<div class='row'><b>{_e(name)}</b>{_pictures(pictures)}</div>"
                  for name, pictures in data.cluster_examples),
        "<h2>Map</h2>" + (f"<p class='map'><img alt='map of the collection' "
                          f"src='{data.map_data_uri}'></p>" if data.map_data_uri
                          else "<p class='muted'>No map yet.</p>"),
        "<h2>Odd ones</h2><p class='muted'>Farthest from the rest of the collection.</p>"
        + _pictures(data.odd_ones),
        "<h2>Likely label mistakes</h2><p class='muted'>Images none of whose nearest images "
        "carry their label, with the label their neighbours suggest.</p>"
        + (_pictures(data.label_mistakes) if data.label_mistakes
           else "<p>None flagged.</p>"),
        "<h2>Image quality</h2>" + _pairs([(f, f"{n:,}") for f, n in data.quality_counts.items()],
                                          head=("flag", "files"))
        + "<div class='charts'>" + "".join(histogram_svg(h) for h in data.histograms) + "</div>",
        "<h2>Search quality</h2>" + _table(*data.search_quality),
    ]
    if data.notes:
        sections.append("<h2>Not shown</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in data.notes)
                        + "</ul>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_e(data.title)}</title><style>{STYLE}</style></head><body>"
            + "\n".join(sections) + "</body></html>\n")


def histogram_svg(histogram: Histogram, width: int = 320, height: int = 150) -> str:
    """Bars of the counts per bin, the threshold as a red line, the axis ends labelled."""
    values = histogram.values[np.isfinite(histogram.values)]
    counts, edges = np.histogram(values, bins=histogram.edges)
    top = max(int(counts.max()) if len(counts) else 0, 1)
    plot_h, bar_w = height - 30, width / max(len(counts), 1)
    bars = "".join(
        f"<rect x='{i * bar_w:.1f}' y='{plot_h - plot_h * c / top:.1f}' width='{bar_w - 1:.1f}' "
        f"height='{plot_h * c / top:.1f}' fill='#4a6fd1'><title>{edges[i]:g} to {edges[i + 1]:g}:"
        f" {c}</title></rect>" for i, c in enumerate(counts))
    line = ""
    if histogram.threshold is not None and edges[0] <= histogram.threshold <= edges[-1]:
        x = width * (histogram.threshold - edges[0]) / (edges[-1] - edges[0])
        line = f"<line x1='{x:.1f}' x2='{x:.1f}' y1='0' y2='{plot_h}' stroke='#d22' stroke-width='2'/>"
    labels = (f"<text x='0' y='{height - 12}' font-size='11'>{edges[0]:g}</text>"
              f"<text x='{width}' y='{height - 12}' font-size='11' text-anchor='end'>"
              f"{edges[-1]:g}{_e(histogram.unit)}</text>")
    return (f"<figure style='width:{width}px'><svg width='{width}' height='{height}' role='img' "
            f"aria-label='{_e(histogram.title)}'>{bars}{line}{labels}</svg><figcaption>"
            f"{_e(histogram.title)} ({len(values):,} files)</figcaption></figure>")


def _pictures(pictures: Sequence[Picture]) -> str:
    items = []
    for p in pictures:
        image = (f"<img alt='' src='{p.data_uri}'>" if p.data_uri
                 else f"<div class='none'>{_e(p.note or 'not readable')}</div>")
        items.append(f"<figure>{image}<figcaption>{_e(p.caption)}</figcaption></figure>")
    return f"<div class='pics'>{''.join(items)}</div>"


def _pairs(pairs: Sequence[tuple[str, str]], head: tuple[str, str] | None = None) -> str:
    if not pairs:
        return "<p class='muted'>Nothing yet.</p>"
    header = f"<tr><th>{_e(head[0])}</th><th>{_e(head[1])}</th></tr>" if head else ""
    return ("<table>" + header + "".join(f"<tr><td>{_e(k)}</td><td class='n'>{_e(v)}</td></tr>"
                                         for k, v in pairs) + "</table>")


def _table(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    if not rows:
        return "<p class='muted'>No evaluation yet (no grounding sets, or not materialized).</p>"
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td class='n'>{_e(cell_text(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)
