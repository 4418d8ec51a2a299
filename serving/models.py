"""What requests may carry: text that is valid Unicode, tags in their one stored form, bounded
numbers; pydantic refuses the rest with a 422 that names the field."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path as PathParam
from pydantic import AfterValidator, BaseModel
from pydantic import Field as PydanticField

from vsearch_pipeline.core.store import normalize_tag

MAX_OFFSET = 2**31 - 1  # pages start below it: a larger int is refused, not sliced with
ClusterLabel = Annotated[int, PathParam(ge=-(2**63), le=2**63 - 1)]  # labels are stored as int64


def _unicode_text(value: str) -> str:
    """JSON can carry lone surrogates (\\ud800), which are no text and cannot be stored."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (it holds a lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_unicode_text)]


def _optional_tag(value: str | None) -> str | None:
    """An empty field is no tag; any other text is a tag in its one stored form."""
    return None if value is None or value == "" else normalize_tag(value)


TagText = Annotated[Text, AfterValidator(normalize_tag)]  # every path that takes a tag: one form
OptionalTag = Annotated[Text | None, AfterValidator(_optional_tag)]


class TagRequest(BaseModel):
    ids: list[Text] = PydanticField(min_length=1, max_length=100_000)
    tag: TagText


class TagsOfRequest(BaseModel):
    ids: list[Text] = PydanticField(min_length=1, max_length=100_000)


class KeepRequest(BaseModel):
    id: Text = PydanticField(description="The image of the group to keep")


class ClusterTagRequest(BaseModel):
    tag: OptionalTag = PydanticField(None, description="The tag; none (or empty) accepts the "
                                                       "suggested name")


class ClickRequest(BaseModel):
    query_id: Text = PydanticField(max_length=64)
    id: Text = PydanticField(max_length=64)


class FeedbackRequest(ClickRequest):
    relevant: bool
