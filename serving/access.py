"""Who may call what, and how large a body each route takes: decided once per app from its
settings, and handed to each router."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Depends
from fastapi.params import Depends as Dependency

from serving.auth import WriteGuard
from serving.http import FORM_OVERHEAD
from vsearch_pipeline.settings import ServingSettings


@dataclass(frozen=True)
class Access:
    writes: list[Dependency]  # every endpoint that writes needs a key
    reads: list[Dependency]  # searches, images, gallery, clusters, metrics: a key when private
    clicks: list[Dependency]  # clicks and ratings: a key when private
    one_upload: int  # body limit of a route that takes one image
    many_uploads: int  # body limit of a route that takes up to max_embed_files images

    @classmethod
    def of(cls, settings: ServingSettings, guard: WriteGuard) -> Access:
        writes = [Depends(guard)]
        return cls(writes=writes,
                   reads=[] if settings.public_reads else writes,
                   clicks=[] if settings.public_clicks else writes,
                   one_upload=settings.max_upload_bytes + FORM_OVERHEAD,
                   many_uploads=settings.max_embed_files * settings.max_upload_bytes
                   + FORM_OVERHEAD)
