"""Searching: by an image of the collection, by an upload (or a crop of it), by text; and the
model's vectors of uploads."""

from __future__ import annotations

import hashlib
import time
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile

from serving.access import Access
from serving.models import OptionalTag
from serving.state import State
from vsearch_pipeline.search import parse_bbox


def similar(image_id: str, state: State, k: int = 50, tag: OptionalTag = None,
            fold: bool | None = None) -> dict:
    """The nearest images to one already in the collection (itself left out)."""
    started, served = time.perf_counter(), state.live()
    k, fold = state.bounded_k(k), state.fold_or_default(fold)
    if image_id not in served.searcher.loaded.position_of:
        raise HTTPException(404, f"no image with id {image_id!r} in index {served.version}")
    only = state.tagged(tag)
    return state.answer(served, lambda n: served.searcher.by_id(image_id, n, only=only), k,
                        started, "similar", f"image:{image_id}", tag, fold,
                        served.searcher.match_floor("image"))


async def search(state: State,
                 file: Annotated[UploadFile, File(description="The query image")],
                 bbox: Annotated[str | None, Form(description="Crop x1,y1,x2,y2 in pixels")] = None,
                 k: Annotated[int, Form()] = 50,
                 tag: Annotated[OptionalTag, Form(description="Only images with this tag")] = None,
                 fold: Annotated[bool | None, Form(description="Fold near-duplicates")] = None,
                 ) -> dict:
    """The nearest images to an uploaded image, or to a crop box of it."""
    started, served = time.perf_counter(), state.live()
    k, fold = state.bounded_k(k), state.fold_or_default(fold)
    only = state.tagged(tag)  # an unknown tag is refused before the upload is embedded
    data = await state.read_upload(file)
    try:
        box = parse_bbox(bbox)
    except ValueError as err:
        raise HTTPException(422, str(err)) from None
    digest = hashlib.sha256(data).hexdigest()[:16]
    query = f"upload:{digest}" + (f"@{','.join(map(str, box))}" if box else "")
    searcher = served.searcher
    vector = state.cached_vector((searcher.model_version, searcher.loaded.transform.version, query),
                                 lambda: state.embed_upload(served, data, box))
    return state.answer(served, lambda n: searcher.by_vector(vector, n, only=only), k, started,
                        "search", query, tag, fold, searcher.match_floor("image"))


def search_text(state: State, q: Annotated[str, Query(description="What to look for, in words")],
                k: int = 50, tag: OptionalTag = None, fold: bool | None = None) -> dict:
    """Images matching a text. With a CLIP-family model, its text tower (`mode: clip`);
    otherwise the words attached to the images, by meaning: tags, folder and file names and
    predicted ImageNet classes (`mode: attached_text`; each result says what matched)."""
    started, served = time.perf_counter(), state.live()
    k, fold = state.bounded_k(k), state.fold_or_default(fold)
    text = q.strip()
    if not text:
        raise HTTPException(422, "the text query is empty")
    if len(text) > state.settings.max_text_length:
        raise HTTPException(422, f"the text query is {len(text)} characters; the most is "
                                 f"{state.settings.max_text_length}")
    searcher = served.searcher
    vector = state.cached_vector((searcher.model_version, searcher.loaded.transform.version,
                                  searcher.text_mode, "text:" + text),
                                 lambda: searcher.embed_text(text))
    only, tags = state.tagged(tag), state.tag_index.by_tag()
    return state.answer(served, lambda n: searcher.by_text(vector, n, only=only, tags=tags), k,
                        started, "search/text", f"text:{text.lower()}", tag, fold,
                        searcher.match_floor("text"), mode=searcher.text_mode)


async def embed(state: State,
                files: Annotated[list[UploadFile], File(description="One or more images")]) -> dict:
    """The configured model's unit vectors of uploaded images, one entry per file (a file
    that is not a usable image gets an `error` instead); 400 when none is usable."""
    served = state.live()
    if len(files) > state.settings.max_embed_files:
        raise HTTPException(413, f"{len(files)} files; at most {state.settings.max_embed_files} "
                                 "per request")
    entries = []
    for upload in files:
        try:
            vector = state.embed_upload(served, await state.read_upload(upload), None)
            entries.append({"filename": upload.filename, "vector": vector.tolist()})
        except HTTPException as err:
            entries.append({"filename": upload.filename, "error": err.detail})
    if all("error" in e for e in entries):
        raise HTTPException(400, "; ".join(f"{e['filename']}: {e['error']}" for e in entries))
    model = served.searcher.model
    return {"model": model.name, "model_version": model.version, "dimension": model.dim,
            "embeddings": entries}


def router(access: Access) -> APIRouter:
    routes = APIRouter()
    routes.add_api_route("/similar/{image_id}", similar, methods=["GET"], dependencies=access.reads)
    routes.add_api_route("/search", search, methods=["POST"], dependencies=access.reads,
                         max_body_size=access.one_upload)
    routes.add_api_route("/search/text", search_text, methods=["GET"], dependencies=access.reads)
    routes.add_api_route("/embed", embed, methods=["POST"], dependencies=access.reads,
                         max_body_size=access.many_uploads)
    return routes
