"""What people say about the results: clicks and ratings, tags on images and on clusters."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from serving.access import Access
from serving.models import (
    ClickRequest,
    ClusterLabel,
    ClusterTagRequest,
    FeedbackRequest,
    KeepRequest,
    TagRequest,
    TagsOfRequest,
)
from serving.routers.browsing import (
    GroupNumber,
    cluster_members,
    cluster_summary,
    duplicate_members,
)
from serving.state import ServiceState, State
from vsearch_pipeline.core.store import choose_keeper, insert_click, insert_rating, normalize_tag


def click(request: ClickRequest, state: State) -> dict:
    """Record that a person opened a result of a search (`query_id` from its answer)."""
    _, ranks = shown_in(state, request)
    state.search_log.write(lambda con: insert_click(con, request.query_id, request.id,
                                                    ranks[request.id]))
    return {"recorded": True, "rank": ranks[request.id]}


def feedback(request: FeedbackRequest, state: State) -> dict:
    """Rate a result relevant or not to its search; the pipeline's `curation_grounding`
    asset turns the ratings into a grounding set that the evaluation measures against."""
    query, _ = shown_in(state, request)
    state.search_log.write(lambda con: insert_rating(con, request.query_id, query, request.id,
                                                     request.relevant))
    return {"recorded": True}


def shown_in(state: ServiceState, request: ClickRequest) -> tuple[str, dict[str, int]]:
    found = state.search_log.search_of(request.query_id)
    if found is None:
        raise HTTPException(404, f"no search with query_id {request.query_id!r}")
    query, ranks = found
    if request.id not in ranks:
        raise HTTPException(422, f"image {request.id!r} was not among that search's results")
    return query, ranks


def add_tags(request: TagRequest, state: State) -> dict:
    """Apply a tag to images of the collection."""
    unknown = [i for i in request.ids if i not in state.live().files]
    if unknown:
        raise HTTPException(404, f"no images with ids {unknown[:20]}")
    try:
        added = state.tag_index.add(request.ids, request.tag)
    except ValueError as err:
        raise HTTPException(422, str(err)) from None
    return {"tag": request.tag, "added": added}


def remove_tags(request: TagRequest, state: State) -> dict:
    """Take a tag off images."""
    removed = state.tag_index.remove(request.ids, request.tag)
    if not removed and not state.tag_index.ids_with(request.tag):
        raise HTTPException(404, f"no image has the tag {request.tag!r}")
    return {"tag": request.tag, "removed": removed}


def list_tags(state: State) -> dict:
    """Every tag with the number of images that carry it."""
    return {"tags": [{"tag": t, "count": n} for t, n in state.tag_index.counts().items()]}


def tags_of(request: TagsOfRequest, state: State) -> dict:
    """The tags of each of these images ([] for none): what the page shows on result cards,
    whose search answers carry no tags."""
    by_id = state.tag_index.tags_by_id()
    return {"tags": {i: by_id.get(i, []) for i in request.ids}}


def tag_cluster(label: ClusterLabel, request: ClusterTagRequest, state: State) -> dict:
    """Tag every member of a cluster: with the suggested name, or with the tag given."""
    served, members = cluster_members(state, label)
    tag = request.tag or cluster_summary(served, label, members,
                                         state.tag_index.tags_by_id())["suggested_name"]
    if not tag:
        raise HTTPException(422, f"cluster {label} has no suggested name; give a tag")
    try:
        tag = normalize_tag(tag)  # a suggested name is stored as a typed one would be
        added = state.tag_index.add(members, tag)
    except ValueError as err:
        raise HTTPException(422, str(err)) from None
    return {"tag": tag, "added": added, "size": len(members)}


DUPLICATE_TAG = "duplicate"  # what "keep this one" marks the rest of a group with


def keep_duplicate(group: GroupNumber, request: KeepRequest, state: State) -> dict:
    """Keep one image of a near-duplicate group: the choice is recorded (it wins over the
    keeper rule in the page and in `vsearch duplicates --export`), the rest of the group is
    tagged `duplicate` and the kept image loses that tag."""
    served = state.live()
    members = duplicate_members(served, group)
    if request.id not in members:
        raise HTTPException(422, f"image {request.id!r} is not in near-duplicate group {group}")
    state.search_log.write(lambda con: choose_keeper(con, request.id, members))
    rest = [m for m in members if m != request.id]
    marked = state.tag_index.add(rest, DUPLICATE_TAG)
    state.tag_index.remove([request.id], DUPLICATE_TAG)
    return {"group": group, "keeper": request.id, "tag": DUPLICATE_TAG, "marked": len(rest),
            "newly_marked": marked}


def router(access: Access) -> APIRouter:
    routes = APIRouter()
    routes.add_api_route("/click", click, methods=["POST"], dependencies=access.clicks)
    routes.add_api_route("/feedback", feedback, methods=["POST"], dependencies=access.clicks)
    routes.add_api_route("/tags", add_tags, methods=["POST"], dependencies=access.writes)
    routes.add_api_route("/tags", remove_tags, methods=["DELETE"], dependencies=access.writes)
    routes.add_api_route("/tags", list_tags, methods=["GET"], dependencies=access.reads)
    routes.add_api_route("/tags/of", tags_of, methods=["POST"], dependencies=access.reads)
    routes.add_api_route("/clusters/{label}/tag", tag_cluster, methods=["POST"],
                         dependencies=access.writes)
    routes.add_api_route("/duplicates/{group}/keep", keep_duplicate, methods=["POST"],
                         dependencies=access.writes)
    return routes
