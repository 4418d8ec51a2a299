"""Where everything lives: the files and folders of a home (`HomeLayout`), each artifact under
the storage root, the files of a version folder. Path names are spelled here and nowhere else;
`vsearch_pipeline.core.artifacts` reads what they name.

Standard library only, on purpose: the command line (`vsearch --help` included), the settings
and the search service import it at start."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "VSEARCH_HOME"  # the home of every command that is given no --home
DEFAULT_HOME = ".vsearch"

# the files and folders of a home
SETTINGS_FILE = "vsearch.yaml"
ARTIFACTS_DIR = "artifacts"  # the storage root, unless storage.root names another
METRICS_DB_FILE = "vsearch.duckdb"  # the pipeline's figures, hashes and duplicate groups
CURATION_DB_FILE = "curation.duckdb"  # the search service's tags, ratings and search log
INSTANCE_DIR = "dagster"  # the Dagster instance
PIN_FILE = "serving_pin"  # the index version the service is pinned to
API_KEYS_FILE = "api-keys"
DEMO_DIR = "demo"  # the demo corpus of `vsearch demo`
DEMO_IMAGES_DIR = "images"  # in the demo corpus: its image files
DEMO_GROUNDING_FILE = "demo.csv"  # in the demo corpus: its grounding set (named `demo`)
DOWNLOADS_DIR = "downloads"  # the journals of `vsearch download`
LOGS_DIR = "logs"
DAGSTER_LOG_FILE = "dagster.log"  # in logs/: the Dagster event log of the runs `vsearch` starts
WEBSERVER_LOG_FILE = "webserver.log"  # in logs/: the output of `vsearch ui`'s dagster-webserver
DAEMON_LOG_FILE = "daemon.log"  # in logs/: the output of the Dagster daemon (`vsearch ui`, `daemon`)

# the folders under the storage root
BATCHES = "batches"
MANIFESTS = "manifest"
SUBSETS = "subset"
HASHES = "hashes"
EMBEDDINGS = "embeddings"
INDEXES = "index"
TRANSFORMS = "transforms"
HEADS = "heads"
CLUSTERS = "clusters"
INSIGHT = "insight"
DUPLICATES = "duplicates"
PARTIAL_COPY_CHECKS = "partial_copies/checks.parquet"  # every pair checked for a partial copy
GROUNDING = "grounding"
CURATION_SETS = ("feedback", "tags")  # the grounding sets made from the search service's curation

# the files of an index version's folder (a transform's folder holds the transform's files too)
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"  # position -> id, URI, path, predicted classes
BUILD_FILE = "build.json"  # the build record, written last: a folder with it is whole
# The build record's format: 1 names the fields readers rely on (version, model_key, model,
# pretrained, view, model_version, params, count, retrieval). A record without `format` is 1.
BUILD_FORMAT = 1
GRAPH_FILE = "graph.npz"  # an index version's neighbour graph (DBA, re-ranking)
PLAIN_VECTORS_FILE = "plain_vectors.npz"  # the indexed vectors before DBA (int8 rows), when augmented
FLOAT16_PLAIN_VECTORS_FILE = "plain_vectors.npy"  # the same, as index versions before int8 rows kept them
TRANSFORM_RECORD_FILE = "transform.json"  # a transform folder's record, written last
HEAD_FILE = "head.npz"  # a projection head's weights
HEAD_RECORD_FILE = "head.json"  # a head folder's record, written last


@dataclass(frozen=True)
class HomeLayout:
    """The files and folders of a home."""

    home: Path

    @property
    def settings_file(self) -> Path:
        return self.home / SETTINGS_FILE

    @property
    def artifacts(self) -> Path:
        return self.home / ARTIFACTS_DIR

    @property
    def metrics_db(self) -> Path:
        return self.home / METRICS_DB_FILE

    @property
    def curation_db(self) -> Path:
        return self.home / CURATION_DB_FILE

    @property
    def dagster(self) -> Path:
        return self.home / INSTANCE_DIR

    @property
    def pin_file(self) -> Path:
        return self.home / PIN_FILE

    @property
    def api_keys(self) -> Path:
        return self.home / API_KEYS_FILE

    @property
    def demo(self) -> Path:
        return self.home / DEMO_DIR

    @property
    def downloads(self) -> Path:
        return self.home / DOWNLOADS_DIR

    @property
    def logs(self) -> Path:
        return self.home / LOGS_DIR

    @property
    def dagster_log(self) -> Path:
        return self.logs / DAGSTER_LOG_FILE

    @property
    def webserver_log(self) -> Path:
        return self.logs / WEBSERVER_LOG_FILE

    @property
    def daemon_log(self) -> Path:
        return self.logs / DAEMON_LOG_FILE


def batch_path(key: str) -> str:
    return f"{BATCHES}/{key}.json"


def manifest_path(key: str) -> str:
    return f"{MANIFESTS}/{key}.parquet"


def subset_path(key: str) -> str:
    return f"{SUBSETS}/{key}.parquet"


def subset_vectors_dir(model_key: str) -> str:
    """Vectors a diverse subset embedded its whole batch with: part of the embedding cache."""
    return f"{SUBSETS}/vectors/{model_key}"


def subset_vectors_path(model_key: str, key: str) -> str:
    return f"{subset_vectors_dir(model_key)}/{key}.parquet"


def hashes_path(key: str) -> str:
    return f"{HASHES}/{key}.parquet"


def embeddings_dir(model_key: str) -> str:
    return f"{EMBEDDINGS}/{model_key}"


def embeddings_path(model_key: str, key: str) -> str:
    return f"{embeddings_dir(model_key)}/{key}.parquet"


def index_dir(model_key: str, version: str) -> str:
    return f"{INDEXES}/{model_key}/{version}"


def transform_dir(model_key: str, version: str) -> str:
    return f"{TRANSFORMS}/{model_key}/{version}"


def clusters_path(model_key: str, version: str) -> str:
    return f"{CLUSTERS}/{model_key}/{version}.parquet"


def insight_path(model_key: str, version: str) -> str:
    return f"{INSIGHT}/{model_key}/{version}.parquet"


def map_picture_path(model_key: str, version: str) -> str:
    """The map of a clustering as a picture, beside its labels."""
    return f"{CLUSTERS}/{model_key}/{version}.map.png"


def duplicates_path(version: str) -> str:
    return f"{DUPLICATES}/{version}.parquet"


def curation_set_path(name: str) -> str:
    """A grounding set made from what people said in the search service (ratings, tags)."""
    return f"{GROUNDING}/{name}.csv"


def head_dir(model_key: str, version: str) -> str:
    return f"{HEADS}/{model_key}/{version}"


def artifact_key(path: str) -> str:
    """The batch key (or version) a per-batch artifact's path is named by:
    `embeddings/<model>/<key>.parquet` -> `<key>`."""
    return path.rsplit("/", 1)[-1].removesuffix(".parquet")


def home_dir(home: str | os.PathLike | None = None) -> Path:
    """The home given, else $VSEARCH_HOME, else ./.vsearch, as an absolute path."""
    return Path(home or os.environ.get(HOME_ENV) or DEFAULT_HOME).resolve()
