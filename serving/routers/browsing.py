"""Looking at the collection: the web page, the gallery, clusters, duplicate groups, and the
images themselves (by id only, never by path)."""

from __future__ import annotations

import io
import pathlib
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import FileResponse, Response
from PIL import Image

from serving.access import Access
from serving.holder import ServedIndex
from serving.http import MEDIA_TYPES, UNAVAILABLE_ORIGINALS
from serving.models import MAX_OFFSET, ClusterLabel, OptionalTag
from serving.originals import OriginalUnavailable, read_original
from serving.state import ServiceState, State
from vsearch_pipeline.core.cluster import suggest_name
from vsearch_pipeline.core.decode import ImageError, decode_rgb
from vsearch_pipeline.core.duplicate_keepers import keeper_of
from vsearch_pipeline.core.sources import SourceUnreachableError
from vsearch_pipeline.duplicates import CollectionDuplicates, files_to_drop

WEB_DIR = pathlib.Path(__file__).resolve().parents[1] / "web"
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]


def page() -> FileResponse:
    """The web page: gallery, search by upload, crop, text or image, tags, clusters."""
    return FileResponse(WEB_DIR / "index.html")


def gallery(state: State, offset: Offset = 0, limit: Annotated[int, Query(ge=1, le=500)] = 48,
            tag: OptionalTag = None) -> dict:
    """The indexed images in path order, a page at a time; with `tag`, only those."""
    served = state.live()
    ordered = served.searcher.loaded.ids_by_path
    only = state.tagged(tag)
    if only is not None:
        keep = set(only)
        ordered = [i for i in ordered if i in keep]
    return {"total": len(ordered), "offset": offset, "limit": limit,
            "images": state.images(served, ordered[offset:offset + limit])}


OUTLIERS = -1  # the label of the images in no cluster: /clusters/-1 lists them


def cluster_summary(served: ServedIndex, label: int, members: list[str],
                    tags: dict[str, list[str]]) -> dict:
    if label == OUTLIERS:  # no name: what they share is that they are like nothing else
        return {"label": label, "size": len(members), "suggested_name": None, "candidates": [],
                "outliers": True}
    labels_of = served.searcher.best_label
    name, candidates = suggest_name(len(members), [tags.get(i, []) for i in members],
                                    [labels_of(i) for i in members])
    return {"label": label, "size": len(members), "suggested_name": name,
            "candidates": [{"name": n, "count": c} for n, c in candidates]}


def cluster_members(state: ServiceState, label: int) -> tuple[ServedIndex, list[str]]:
    served = state.live()
    if not served.views.cluster_members:
        raise HTTPException(404, "no clusters are materialized yet")
    members = (served.views.noise if label == OUTLIERS
               else served.views.cluster_members.get(label))
    if members is None:
        raise HTTPException(404, f"no cluster {label}")
    return served, members


def clusters(state: State, examples: Annotated[int, Query(ge=0, le=24)] = 6) -> dict:
    """Every cluster, largest first, with its suggested name and a few members; `noise` counts
    the outliers (label -1, listed by /clusters/-1)."""
    served, tags = state.live(), state.tag_index.tags_by_id()
    found = []
    for label, members in served.views.cluster_members.items():
        summary = cluster_summary(served, label, members, tags)
        summary["examples"] = state.images(served, members[:examples], tags)
        found.append(summary)
    return {"clusters": found, "noise": len(served.views.noise),
            "version": served.views.identity[0]}


def cluster(label: ClusterLabel, state: State, offset: Offset = 0,
            limit: Annotated[int, Query(ge=1, le=500)] = 48) -> dict:
    """The members of one cluster, a page at a time."""
    served, members = cluster_members(state, label)
    tags = state.tag_index.tags_by_id()
    return {**cluster_summary(served, label, members, tags), "offset": offset, "limit": limit,
            "images": state.images(served, members[offset:offset + limit], tags)}


def duplicates(state: State, offset: Offset = 0,
               limit: Annotated[int, Query(ge=1, le=500)] = 20) -> dict:
    """Near-duplicate groups as the pipeline decided them, largest first, a page at a time,
    with the rule that decided them (method and thresholds, as recorded with the groups) and
    each group's keeper: the one a person chose, else the keeper rule's (core.duplicate_keepers)."""
    served, tags = state.live(), state.tag_index.tags_by_id()
    groups = served.views.duplicate_groups
    chosen = state.search_log.db.chosen_keepers()
    return {"total": len(groups), "offset": offset, "limit": limit,
            "rule": served.views.duplicate_rule,
            "groups": [group_entry(state, served, number, chosen, tags)
                       for number in range(offset, min(offset + limit, len(groups)))]}


GroupNumber = Annotated[int, Path(ge=0, le=MAX_OFFSET)]


def duplicate_group(group: GroupNumber, state: State) -> dict:
    """One near-duplicate group (the number a folded result card names)."""
    served = state.live()
    duplicate_members(served, group)
    return group_entry(state, served, group, state.search_log.db.chosen_keepers())


PartName = Annotated[str, Query(min_length=1, max_length=500,
                                description="A tag, else a folder of the collection")]


def duplicates_between(state: State, a: PartName, b: PartName) -> dict:
    """The files of part `b` that duplicate an image of part `a` (each a tag, else a folder):
    what leaks from a training split into a test split, as `vsearch duplicates --between`."""
    served = state.live()
    tags = {tag: set(ids) for tag, ids in state.tag_index.by_tag().items()}
    found = CollectionDuplicates(
        served.views.duplicate_groups, served.views.suggested_keepers,
        state.holder.collection_files(), served.views.duplicate_rule or {},
        state.search_log.db.chosen_keepers(), tags, served.views.identity[1] or "")
    try:
        rows, said = files_to_drop(found, (a, b))
    except ValueError as err:
        raise HTTPException(422, str(err)) from None
    return {"a": a, "b": b, "summary": said, "total": len(rows),
            "files": [{"group": r["group"], "id": r["drop_id"], "path": r["drop_path"],
                       "duplicates_id": r["keep_id"], "duplicates_path": r["keep_path"],
                       "reason": r["reason"]} for r in rows]}


def duplicate_members(served: ServedIndex, group: int) -> list[str]:
    groups = served.views.duplicate_groups
    if group >= len(groups):
        raise HTTPException(404, f"no near-duplicate group {group} ({len(groups)} groups)")
    return groups[group]


def group_entry(state: ServiceState, served: ServedIndex, group: int, chosen: set[str],
                tags: dict[str, list[str]] | None = None) -> dict:
    members = served.views.duplicate_groups[group]
    keeper, kept_by = keeper_of(members, served.views.suggested_keepers[group], chosen)
    return {"group": group, "size": len(members), "keeper": keeper, "kept_by": kept_by,
            "images": state.images(served, members, tags)}


def original(state: ServiceState, image_id: str) -> tuple[bytes, str]:
    """An image's original bytes and format, only while they are still the indexed ones:
    404 for an unknown id, 410 for an original moved or deleted since it was indexed, 409
    for one that holds other bytes now (never served under the old id)."""
    found = state.live().files.get(image_id)
    if found is None:
        raise HTTPException(404, f"no image with id {image_id!r}")
    try:
        return read_original(image_id, found, state.source_endpoint_url), found.format
    except OriginalUnavailable as err:
        raise HTTPException(UNAVAILABLE_ORIGINALS[err.state], err.reason) from None
    except SourceUnreachableError as err:
        raise HTTPException(503, str(err)) from None


def image(image_id: str, state: State) -> Response:
    """The original file of an image in the collection (ids only, never paths)."""
    data, fmt = original(state, image_id)
    return Response(data, media_type=MEDIA_TYPES.get(fmt, "application/octet-stream"),
                    headers={"Cache-Control": "public, max-age=86400"})


def thumbnail(image_id: str, state: State,
              size: Annotated[int, Query(ge=16, le=1024)] = 256) -> Response:
    """A JPEG no larger than size x size."""
    data, _ = original(state, image_id)
    try:
        picture: Image.Image = decode_rgb(data, min_size=size)
    except ImageError as err:
        raise HTTPException(422, f"the original of image {image_id} cannot be made into a "
                                 f"thumbnail ({err.status}): {err.reason}") from None
    picture.thumbnail((size, size))
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=85)
    return Response(out.getvalue(), media_type="image/jpeg",
                    headers={"Cache-Control": "public, max-age=86400"})


def router(access: Access) -> APIRouter:
    routes = APIRouter()
    routes.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    routes.add_api_route("/gallery", gallery, methods=["GET"], dependencies=access.reads)
    routes.add_api_route("/clusters", clusters, methods=["GET"], dependencies=access.reads)
    routes.add_api_route("/clusters/{label}", cluster, methods=["GET"], dependencies=access.reads)
    routes.add_api_route("/duplicates", duplicates, methods=["GET"], dependencies=access.reads)
    routes.add_api_route("/duplicates/between", duplicates_between, methods=["GET"],
                         dependencies=access.reads)  # before /duplicates/{group}
    routes.add_api_route("/duplicates/{group}", duplicate_group, methods=["GET"],
                         dependencies=access.reads)
    routes.add_api_route("/images/{image_id}", image, methods=["GET"], dependencies=access.reads)
    routes.add_api_route("/images/{image_id}/thumbnail", thumbnail, methods=["GET"],
                         dependencies=access.reads)
    return routes
