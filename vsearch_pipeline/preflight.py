"""The checks made before a run does any work, and that write nothing: a run that cannot succeed
fails here, in seconds, with a message that names the setting, instead of half-way through.

Kept apart from the runner so that `vsearch materialize` gets to them without importing the
asset graph, torch and the models first.
"""

from __future__ import annotations

from pathlib import Path

from vsearch_pipeline.core.manifest import content_hash, image_id
from vsearch_pipeline.core.sampling import unmatched_force_include
from vsearch_pipeline.core.sources import (
    SourceObject,
    SourceUnreachableError,
    list_source,
    read_object,
)
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.settings import Settings, SettingsError


def check_before_work(home: Path, settings: Settings) -> list[SourceObject]:
    """Every check that can fail a run, made before any work starts and without writing anything:
    the settings, the source (listed here, and returned), and that each `subset.force_include`
    entry names a file in it. Raises SettingsError naming the setting."""
    settings.check()
    uri = settings.source.uri
    objects = list_checked_source(uri, settings.source.endpoint_url)
    store = ArtifactStore(settings.artifacts_root(home), settings.storage.endpoint_url)
    missing = missing_force_include(settings.subset.force_include, objects, store,
                                    settings.source.endpoint_url)
    if missing:
        raise SettingsError(
            f"subset.force_include: {len(missing)} of {len(settings.subset.force_include)} "
            f"entries name no file in {uri}: "
            f"{', '.join(repr(m) for m in missing[:20])} (give image ids, URIs, or paths relative "
            "to the source, e.g. 'cats/01.jpg')")
    return objects


def list_checked_source(uri: str | None, endpoint_url: str | None) -> list[SourceObject]:
    """The source's listing, or a SettingsError naming source.uri: not set, no such folder or
    bucket, not allowed to list."""
    if not uri:
        raise SettingsError("source.uri is not set: pass --source, or set it to a folder or an "
                            "s3://bucket/prefix in the settings")
    try:
        return list_source(uri, endpoint_url)
    except FileNotFoundError:
        raise SettingsError(f"source.uri {uri!r} does not exist: no such folder, or no such "
                            "bucket or prefix on the S3 endpoint") from None
    except PermissionError as err:
        raise SettingsError(f"source.uri {uri!r} cannot be listed: {err}") from None


def source_problems(given: dict) -> list[str]:
    """What is wrong with the source named by settings that did not validate (the merged,
    unchecked sections), so that one report says everything: settings errors and a missing
    source together. Nothing when the source section is not even strings (its own errors say
    so) or when nothing was read (a file that is not settings), and nothing for force_include,
    which needs valid settings to be checked."""
    if not given:
        return []
    source = given.get("source", {})
    uri = source.get("uri") if isinstance(source, dict) else None
    endpoint = source.get("endpoint_url") if isinstance(source, dict) else None
    if not isinstance(source, dict) or not isinstance(uri, str | None) \
            or not isinstance(endpoint, str | None):
        return []
    try:
        list_checked_source(uri, endpoint)
    except (SettingsError, SourceUnreachableError, OSError) as err:
        return [str(err)]
    return []


def missing_force_include(entries: list[str], objects: list[SourceObject], store: ArtifactStore,
                          endpoint_url: str | None = None) -> list[str]:
    """The force_include entries that match no listed file by path or URI, nor by image id: the
    ids of the images already in a manifest, then (only while some entry is still unmatched) the
    ids of the files not in any batch yet, which means reading those files."""
    missing = unmatched_force_include(entries, ((o.path, o.uri) for o in objects))
    if missing:
        from vsearch_pipeline.core.layout import MANIFESTS  # imports torch: only when needed

        known = {i for path in store.list(MANIFESTS, ".parquet")
                 for i in store.read_parquet(path, columns=["id"]).column("id").to_pylist()}
        missing = [m for m in missing if m not in known]
    if missing:
        from vsearch_pipeline.core.batches import stored_batches, unbatched

        missing = _unmatched_by_new_ids(missing, unbatched(objects, stored_batches(store)),
                                        endpoint_url)
    return missing


def _unmatched_by_new_ids(missing: list[str], new: list[SourceObject],
                          endpoint_url: str | None) -> list[str]:
    for obj in new:
        try:
            found = image_id(content_hash(read_object(obj.uri, endpoint_url)))
        except OSError:  # an outage is a SourceUnreachableError, not an OSError: it propagates
            continue  # unreadable: its manifest row will say why
        missing = [m for m in missing if m != found]
        if not missing:
            break
    return missing
