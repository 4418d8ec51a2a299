"""Seeing the whole collection: the map, the odd ones, likely label mistakes, poor files.

All of it is what the pipeline wrote (the clustering's map, the insight asset's rows); the
service only pages and colours it. Accepting a suggested label is tagging (`label:<name>`,
POST /tags), which the next insight run reads as the image's label.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from serving.access import Access
from serving.holder import ServedIndex
from serving.models import MAX_OFFSET
from serving.state import State
from serving.views import Insight
from vsearch_pipeline.core.image_quality import QUALITY_FLAGS
from vsearch_pipeline.core.label_review import LABEL_TAG_PREFIX

Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
Limit = Annotated[int, Query(ge=1, le=500)]
Colour = Literal["cluster", "group", "tag", "label", "quality"]
QualityFlag = Literal["blurry", "dark", "bright", "tiny"]  # core.image_quality.QUALITY_FLAGS
NO_CATEGORY = -1


def collection_map(state: State, colour: Colour = "cluster") -> dict:
    """Every image's place on the map (`x`, `y` and `paths` in the order of `ids`) and a
    category per image for `colour`: its cluster, near-duplicate group, first tag, label or
    first quality flag (-1: none; `names` names the categories)."""
    served = state.live()
    places = served.views.map
    if not places.ids:
        raise HTTPException(404, "no map yet: the clusters asset lays it out "
                                 "(`vsearch materialize`)")
    category, names = _categories(state, served, colour)
    loaded = served.searcher.loaded
    paths = [loaded.paths[loaded.position_of[i]] if i in loaded.position_of else i
             for i in places.ids]
    return {"count": len(places.ids), "version": served.views.identity[0], "ids": places.ids,
            "paths": paths,
            "x": [round(v, 5) for v in places.x], "y": [round(v, 5) for v in places.y],
            "colour": colour, "category": category, "names": names}


def _categories(state: State, served: ServedIndex, colour: Colour) -> tuple[list[int], list[str]]:
    ids = served.views.map.ids
    if colour == "cluster":
        labels = served.views.map.cluster
        names = sorted({label for label in labels if label >= 0})
        place = {label: i for i, label in enumerate(names)}
        return [place.get(label, NO_CATEGORY) for label in labels], [f"cluster {n}" for n in names]
    if colour == "group":
        group_of = served.views.group_of
        found = sorted({group_of[i] for i in ids if i in group_of})
        place = {g: k for k, g in enumerate(found)}
        return ([place[group_of[i]] if i in group_of else NO_CATEGORY for i in ids],
                [f"group {g}" for g in found])
    if colour == "tag":
        tags = state.tag_index.tags_by_id()
        return _named([tags.get(i, [None])[0] for i in ids])
    insight = _insight(served)
    if colour == "label":
        return _named([insight.labels.get(i) for i in ids])
    return _named([insight.quality_flags.get(i, [None])[0] for i in ids])


def _named(values: list[str | None]) -> tuple[list[int], list[str]]:
    names = sorted({v for v in values if v is not None})
    place = {name: i for i, name in enumerate(names)}
    return [place[v] if v is not None else NO_CATEGORY for v in values], names


def _insight(served: ServedIndex) -> Insight:
    if served.views.insight is None:
        raise HTTPException(404, "no insight yet: the collection_insight asset computes it "
                                 "(`vsearch materialize`)")
    return served.views.insight


def odd_ones(state: State, offset: Offset = 0, limit: Limit = 48) -> dict:
    """The images farthest from the rest of the collection, the oddest first, with their
    outlier score and uniqueness (each the share of the collection they rank above), and
    whether the clustering left them out."""
    served = state.live()
    insight = _insight(served)
    ids = insight.odd_ones[offset:offset + limit]
    noise = set(served.views.noise)
    images = state.images(served, ids)
    for image in images:
        outlier, uniqueness = insight.scores[image["id"]]
        image |= {"outlier": round(outlier, 4), "uniqueness": round(uniqueness, 4),
                  "cluster_outlier": image["id"] in noise}
    return {"total": len(insight.odd_ones), "offset": offset, "limit": limit, "images": images}


def label_mistakes(state: State, offset: Offset = 0, limit: Limit = 48) -> dict:
    """Images whose nearest images carry another label, most confident first: each with its
    label, the suggested one, the confidence, and the tag that accepts it."""
    served = state.live()
    insight = _insight(served)
    page = insight.label_mistakes[offset:offset + limit]
    images = state.images(served, [m["id"] for m in page])
    for image, mistake in zip(images, page, strict=True):
        image |= {"label": mistake["label"], "suggested": mistake["suggested"],
                  "confidence": mistake["confidence"],
                  "accept_tag": f"{LABEL_TAG_PREFIX}{mistake['suggested']}"}
    return {"total": len(insight.label_mistakes), "offset": offset, "limit": limit,
            "images": images}


def quality(state: State, flag: QualityFlag, offset: Offset = 0, limit: Limit = 48) -> dict:
    """The images whose file the insight asset flagged `flag` (blurry, dark, bright, tiny)."""
    served = state.live()
    insight = _insight(served)
    ids = [i for i in served.searcher.loaded.ids_by_path if flag in insight.quality_flags.get(i, ())]
    counts = {f: sum(f in flags for flags in insight.quality_flags.values()) for f in QUALITY_FLAGS}
    return {"flag": flag, "total": len(ids), "counts": counts, "offset": offset, "limit": limit,
            "images": state.images(served, ids[offset:offset + limit])}


async def report(request: Request, state: State) -> HTMLResponse:
    """The collection report (`vsearch report --html`) as one self-contained page; made again
    when the clusters, duplicate groups or insight change."""
    build = request.app.state.report
    if build is None:
        raise HTTPException(404, "this service has no home to report on")
    identity = state.live().views.identity
    cached = getattr(request.app.state, "report_cache", None)
    if cached is None or cached[0] != identity:
        cached = (identity, await run_in_threadpool(build))
        request.app.state.report_cache = cached
    return HTMLResponse(cached[1])


def router(access: Access) -> APIRouter:
    routes = APIRouter()
    routes.add_api_route("/map", collection_map, methods=["GET"], dependencies=access.reads)
    routes.add_api_route("/odd", odd_ones, methods=["GET"], dependencies=access.reads)
    routes.add_api_route("/label-mistakes", label_mistakes, methods=["GET"],
                         dependencies=access.reads)
    routes.add_api_route("/quality", quality, methods=["GET"], dependencies=access.reads)
    routes.add_api_route("/report", report, methods=["GET"], dependencies=access.reads,
                         response_class=HTMLResponse)
    return routes
