"""The Dagster definitions of a vsearch home (``VSEARCH_HOME``, default ``./.vsearch``).

Loaded by ``workspace.yaml`` for ``dagster dev`` / ``dagster-webserver``, and by the ``vsearch``
command, so the UI and the command line always run the same graph with the same settings.
"""

from __future__ import annotations

from pathlib import Path

from dagster import Definitions

from vsearch_pipeline.assets import ALL_ASSETS
from vsearch_pipeline.automation import JOBS, make_automation
from vsearch_pipeline.core.layout import HomeLayout, home_dir
from vsearch_pipeline.execution import executor_for
from vsearch_pipeline.resources import (
    ArtifactStorage,
    CurationDatabase,
    EmbeddingModelResource,
    ImageSource,
    MetricsDatabase,
    PipelineSettings,
)
from vsearch_pipeline.settings import Settings, load_settings


def build_resources(home: Path, settings: Settings) -> dict:
    return {
        "source": ImageSource(**settings.source.model_dump()),
        "storage": ArtifactStorage(root=settings.artifacts_root(home),
                                   endpoint_url=settings.storage.endpoint_url),
        "metrics_db": MetricsDatabase(path=str(HomeLayout(home).metrics_db)),
        "curation_db": CurationDatabase(path=str(HomeLayout(home).curation_db)),
        "model": EmbeddingModelResource(**settings.model.model_dump()),
        "settings": PipelineSettings.of(settings),
    }


def make_definitions(home: Path, settings: Settings) -> Definitions:
    sensors, schedules = make_automation(settings)
    return Definitions(
        assets=ALL_ASSETS,
        jobs=JOBS,
        sensors=sensors,
        schedules=schedules,
        resources=build_resources(home, settings),
        executor=executor_for(settings.execution),
    )


defs = make_definitions(home_dir(), load_settings(home_dir()))
