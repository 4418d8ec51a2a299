"""Settings of a vsearch home: one YAML file, read into validated sections.

A home folder holds everything a collection needs: ``vsearch.yaml`` (these settings),
``artifacts/`` (manifests, embeddings, indexes, clusters), ``vsearch.duckdb`` (hashes, groups and
metrics) and ``dagster/`` (the Dagster instance). Every setting is documented in README.md.
"""

from __future__ import annotations

import difflib
import os
import typing
from pathlib import Path
from typing import Any

import annotated_types
import yaml
from dagster import Config
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vsearch_pipeline.core.cluster import ClusterParams
from vsearch_pipeline.core.cluster import validate_params as validate_cluster_params
from vsearch_pipeline.core.decode import DEFAULT_MAX_PIXELS
from vsearch_pipeline.core.engines import validate_engine
from vsearch_pipeline.core.index import IndexParams
from vsearch_pipeline.core.index import validate_params as validate_index_params
from vsearch_pipeline.core.model_spec import DEFAULT_MODEL, ModelSpec, validate_settings
from vsearch_pipeline.core.retrieval import RERANKERS, QueryPlan
from vsearch_pipeline.core.text_files import TextFileError, read_text

HOME_ENV = "VSEARCH_HOME"
DEFAULT_HOME = ".vsearch"
SETTINGS_FILE = "vsearch.yaml"
INT64_MAX = 2**63 - 1  # what DuckDB, Parquet, numpy and Dagster metadata hold
C_INT_MAX = 2**31 - 1  # what FAISS takes for its build and search parameters
SEED_MAX = 2**32 - 1  # what numpy and scikit-learn take as a random_state
_INT64_RANGE = f"at most {INT64_MAX} (a 64-bit integer)"


class SettingsError(ValueError):
    """Settings that cannot be used: one line per problem, each naming the setting (e.g.
    `index.index_type`) and what it may be, so that a run fails before any work starts."""


class Section(Config):
    """A settings section; unknown keys are refused (a typo must not be ignored), and so are
    numbers that would not survive the run: NaN and infinities (YAML `.nan`, `.inf`, `1e400`)
    and integers past 64 bits (booleans given for numbers: see _refuse_booleans_for_numbers)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _fits_64_bits(cls, value: Any) -> Any:
        values = value if isinstance(value, list) else [value]
        if any(type(v) is int and abs(v) > INT64_MAX for v in values):
            raise ValueError(f"must be {_INT64_RANGE}, got {value!r}")
        return value


class SourceSettings(Section):
    uri: str | None = None
    endpoint_url: str | None = None


class StorageSettings(Section):
    root: str | None = None  # default: <home>/artifacts
    endpoint_url: str | None = None


class ModelSettings(Section):
    name: str = DEFAULT_MODEL
    pretrained: str | None = None
    view: str | None = None  # centre_crop | whole | multi; None: multi, or centre_crop for open_clip
    batch_size: int = Field(32, ge=1, le=4096)
    device: str = "cpu"
    precision: str = "fp32"
    engine: str = "auto"  # auto | torch | onnx | openvino: see vsearch_pipeline.core.engines

    @model_validator(mode="after")
    def _engine_fits(self) -> ModelSettings:
        """An engine that cannot run this model, device or precision fails at load, not mid-run."""
        validate_engine(self.engine, self.name, self.device, self.precision)
        return self


class ManifestSettings(Section):
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    read_workers: int = Field(4, ge=1, le=64)


class SubsetSettings(Section):
    fraction: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0
    force_include: list[str] = []


class NearDuplicateSettings(Section):
    """How near-duplicate groups are found (see vsearch_pipeline.core.near_duplicates)."""

    method: str = "combined"  # combined: pHash and embedding contrast | phash: pHash bits alone
    hamming_threshold: int = Field(8, ge=0, le=32)  # phash: the rule; combined: pHash candidates
    neighbours: int = Field(10, ge=1, le=100)  # combined: nearest images per image taken as candidates
    contrast_threshold: float | None = Field(None, ge=-2.0, le=2.0)  # combined; None: chosen from the data
    cosine_floor: float | None = Field(None, ge=-1.0, le=1.0)  # combined; None: chosen from the data

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        from vsearch_pipeline.core.near_duplicates import validate_method

        return validate_method(method)


class IndexSettings(Section):
    index_type: str = "hnsw"
    M: int | None = Field(None, ge=1, le=C_INT_MAX)
    efConstruction: int = Field(200, ge=1, le=C_INT_MAX)
    efSearch: int = Field(128, ge=1, le=C_INT_MAX)
    nlist: int | None = Field(None, ge=1, le=C_INT_MAX)
    nprobe: int = Field(16, ge=1, le=C_INT_MAX)
    nbits: int = Field(8, ge=1, le=16)
    opq: bool = False
    fast_scan: bool = False
    storage: str = "Flat"
    refine: bool = False
    k_factor: float = Field(4.0, ge=1.0)
    min_recall: float = Field(0.9, ge=0.0, le=1.0)
    recall_queries: int = Field(1000, ge=1)
    rebuild_growth_ratio: float = Field(0.25, gt=0.0)

    @model_validator(mode="after")
    def _consistent(self) -> IndexSettings:
        """Combinations FAISS would refuse (or silently ignore) fail when the file is read."""
        validate_index_params(self.params())
        return self

    def params(self) -> IndexParams:
        return IndexParams(self.index_type, self.M, self.efConstruction, self.efSearch,
                           self.nlist, self.nprobe, self.nbits, self.opq, self.fast_scan,
                           self.storage, self.refine, self.k_factor)


class RetrievalSettings(Section):
    """How indexed vectors are post-processed and queries answered (docs/search-quality.md has
    each one's measured effect). All of it is recorded in the index's build.json and followed by
    the search service and the evaluation asset alike."""

    projection_head: bool = False  # a head trained on the collection (asset projection_head)
    projection_head_images: int = Field(10_000, ge=64)  # images it is trained on at most (a seeded sample)
    whitening: bool = False  # PCA-whitening fitted on the collection (asset retrieval_transform)
    whitening_dims: int = Field(256, ge=2)  # axes kept
    whitening_shrinkage: float = Field(1.0, ge=0.0)  # eigenvalues + shrinkage * their mean
    whitening_power: float = Field(1.0, gt=0.0, le=1.0)  # signed power after whitening (1: none)
    database_augmentation_k: int = Field(10, ge=0, le=100)  # DBA neighbours per indexed vector; 0: off
    query_expansion_k: int = Field(10, ge=0, le=100)  # alpha-QE neighbours per query; 0: off
    expansion_alpha: float = Field(3.0, ge=0.0)  # neighbour weight cosine ** alpha (DBA and QE)
    query_expansion_rounds: int = Field(1, ge=1, le=5)  # >1: the expanded query expanded again
    rerank: str = "none"  # none | k_reciprocal
    rerank_depth: int = Field(100, ge=1, le=10_000)  # candidates re-ranked and checked for near-duplicates
    rerank_k1: int = Field(20, ge=1, le=100)  # neighbourhood size of the k-reciprocal sets
    near_duplicate_floor: float = Field(0.7, ge=0.0, le=1.0)  # plain cosine lifting a candidate; 1: off

    @field_validator("rerank")
    @classmethod
    def _known_rerank(cls, rerank: str) -> str:
        if rerank not in RERANKERS:
            raise ValueError(f"retrieval.rerank must be one of {', '.join(RERANKERS)}, "
                             f"got {rerank!r}")
        return rerank

    def query_plan(self) -> QueryPlan:
        return QueryPlan(self.query_expansion_k, self.expansion_alpha,
                         self.query_expansion_rounds, self.rerank, self.rerank_depth,
                         self.rerank_k1, self.near_duplicate_floor)

    def transform_settings(self) -> dict:
        """What the fitted whitening depends on: a change means fitting it again (the head is
        compared by its version, which says whether there is one)."""
        return {"whitening": self.whitening, "whitening_dims": self.whitening_dims,
                "whitening_shrinkage": self.whitening_shrinkage,
                "whitening_power": self.whitening_power}


class ClusterSettings(Section):
    method: str = "hdbscan"
    reduce: str = "pca"
    n_components: int = Field(32, ge=2)
    min_cluster_size: int = Field(5, ge=2)
    min_samples: int | None = Field(None, ge=1)
    n_clusters: int | None = Field(None, ge=2)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    drift_tolerance: float = Field(0.1, gt=0.0)

    def params(self) -> ClusterParams:
        return ClusterParams(**self.model_dump(exclude={"drift_tolerance"}))


class EvaluationSettings(Section):
    grounding_sets: list[str] = []
    ks: list[int] = [1, 5, 10]

    @field_validator("ks")
    @classmethod
    def _positive(cls, ks: list[int]) -> list[int]:
        if not ks or min(ks) < 1:
            raise ValueError("evaluation.ks must be a non-empty list of positive integers")
        return sorted(set(ks))


class ServingSettings(Section):
    max_k: int = Field(1000, ge=1, le=100_000)
    max_upload_bytes: int = Field(20_000_000, ge=1)
    max_embed_files: int = Field(64, ge=1, le=10_000)
    max_text_length: int = Field(500, ge=1, le=10_000)
    refresh_interval_s: float = Field(10.0, gt=0)
    fold_duplicates: bool = True
    query_cache_size: int = Field(1024, ge=0)
    search_log_flush_s: float = Field(1.0, gt=0)
    api_keys_file: str | None = None  # hashed API keys; every endpoint that writes needs one
    public_reads: bool = True  # false: searches, images, gallery, clusters, metrics need a key too
    public_clicks: bool = True  # false: POST /click and /feedback need a key too
    max_upload_pixels: int = Field(40_000_000, ge=1)  # refused from the header, before decoding
    rate_limit_per_s: float = Field(50.0, ge=0)  # per client (key name, else IP); 0 turns it off
    rate_limit_burst: int = Field(100, ge=1)


class AutomationSettings(Section):
    """The sensor that turns new files into batches, and the schedules (see README)."""

    enabled: bool = True  # sensors and schedules start running with the Dagster daemon
    sensor_interval_s: int = Field(30, ge=1)
    sensor_lookback_s: float = Field(600.0, ge=0.0)
    max_batch_files: int = Field(10_000, ge=1)
    recluster_cron: str = "0 2 * * *"
    index_rebuild_cron: str = "0 3 * * 0"
    timezone: str = "UTC"

    @field_validator("recluster_cron", "index_rebuild_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from dagster._utils.schedules import is_valid_cron_string

        if not is_valid_cron_string(value):
            raise ValueError(f"not a cron expression: {value!r} (five fields, e.g. '0 2 * * *')")
        return value


class ExecutionSettings(Section):
    """Where the steps of a run execute (see docs/scale-out.md)."""

    executor: str = "multiprocess"  # in_process | multiprocess | dask
    max_concurrent: int | None = Field(None, ge=1)
    dask_address: str | None = None  # scheduler of an existing Dask cluster, e.g. tcp://host:8786

    @field_validator("executor")
    @classmethod
    def _known_executor(cls, executor: str) -> str:
        allowed = ("in_process", "multiprocess", "dask")
        if executor not in allowed:
            raise ValueError(f"execution.executor must be one of {', '.join(allowed)}, got {executor!r}")
        return executor


class Settings(Section):
    source: SourceSettings = SourceSettings()
    storage: StorageSettings = StorageSettings()
    model: ModelSettings = ModelSettings()
    manifest: ManifestSettings = ManifestSettings()
    subset: SubsetSettings = SubsetSettings()
    near_duplicates: NearDuplicateSettings = NearDuplicateSettings()
    index: IndexSettings = IndexSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    clusters: ClusterSettings = ClusterSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    serving: ServingSettings = ServingSettings()
    automation: AutomationSettings = AutomationSettings()
    execution: ExecutionSettings = ExecutionSettings()

    def artifacts_root(self, home: Path) -> str:
        """Where the artifacts go: `storage.root`, else the home's artifacts/ folder."""
        return self.storage.root or str(home / "artifacts")

    def check(self) -> Settings:
        """The checks that need more than a type: run them before any work starts."""
        validate_settings(ModelSpec(self.model.name, self.model.pretrained, self.model.view),
                          self.model.device, self.model.precision)
        validate_index_params(self.index.params())
        validate_cluster_params(self.clusters.params())
        return self


def home_dir(home: str | os.PathLike | None = None) -> Path:
    return Path(home or os.environ.get(HOME_ENV) or DEFAULT_HOME).resolve()


def load_settings(home: Path, overrides: dict[str, Any] | None = None) -> Settings:
    """The home's vsearch.yaml (if any) with `overrides` merged in, section by section."""
    path = home / SETTINGS_FILE
    data = read_settings_file(path) if path.exists() else {}
    merged, problems = _refuse_booleans_for_numbers(_merge(data, overrides or {}))
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as err:
        problems += [describe_error(e) for e in err.errors()]
    if problems:
        raise SettingsError("\n".join(problems))
    return settings


def _refuse_booleans_for_numbers(data: Any, model: type[BaseModel] = Settings,
                                loc: tuple[str, ...] = ()) -> tuple[Any, list[str]]:
    """`data` without the booleans given where a setting takes a number, and a line for each.

    pydantic would read `batch_size: yes` as 1, and Dagster's Config drops a value equal to its
    default before any validator sees it (`fraction: yes` equals 1.0), so booleans are looked
    for here, in the raw sections, before they are validated."""
    if not isinstance(data, dict):
        return data, []
    kept, problems = {}, []
    for key, value in data.items():
        field = model.model_fields.get(key)
        annotation = field.annotation if field else None
        name = ".".join((*loc, str(key)))
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            value, inner = _refuse_booleans_for_numbers(value, annotation, (*loc, str(key)))
            problems += inner
        elif _wants_number(annotation) and _has_boolean(value):
            problems.append(f"{name} must be a number, got {value!r} (YAML reads yes, no, on and "
                            "off as booleans)")
            continue
        kept[key] = value
    return kept, problems


def _has_boolean(value: Any) -> bool:
    return any(isinstance(v, bool) for v in (value if isinstance(value, list) else [value]))


def _wants_number(annotation: Any) -> bool:
    """Whether a field's type takes an int or a float (alone, optional, or in a list)."""
    return annotation in (int, float) or any(map(_wants_number, typing.get_args(annotation)))


def read_settings_file(path: Path) -> dict[str, Any]:
    """A YAML file of settings sections (empty: none), or a SettingsError that says what is wrong
    and where: bytes that are not UTF-8, YAML that does not parse, a key given twice."""
    try:
        data = yaml.load(read_text(path.read_bytes(), str(path)), Loader=UniqueKeyLoader)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SettingsError(f"{path}: not valid YAML{line}: {problem}") from None
    except TextFileError as err:
        raise SettingsError(str(err)) from None
    except OSError as err:
        raise SettingsError(f"{path}: cannot be read: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: the settings file must be a mapping of sections "
                            f"({', '.join(Settings.model_fields)}), not a {type(data).__name__}")
    return data


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last
    one silently, so a second `index:` block would replace the whole of the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice (first on line {first_line[key]}): "
                    "keep one, or merge the two", key_node.start_mark)
            if isinstance(key, typing.Hashable):
                first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def describe_error(error: dict) -> str:
    """One pydantic error as one line: the setting's dotted name, what it may be, what it got."""
    loc = [str(part) for part in error["loc"]]
    name, kind, got = ".".join(loc), error["type"], error.get("input")
    message = error["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return _unknown_setting(loc)
    if kind == "value_error":  # our own validators already name the setting
        if message.startswith(loc[0] if loc else ""):
            return message
        return f"{name} {message}" if message.startswith("must ") else f"{name}: {message}"
    allowed = _allowed_range(_field(loc))
    if allowed and kind.startswith(("greater_than", "less_than")):
        return f"{name} must be {allowed}, got {got!r}"
    if kind == "int_parsing_size":  # a float such as 1e20 given for an integer
        bounded = allowed and allowed.startswith(("in ", "at most", "below"))
        return f"{name} must be {allowed if bounded else _INT64_RANGE}, got {got!r}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{name} must be a mapping of settings ({', '.join(_section(loc).model_fields)}), got {got!r}"
    return f"{name}: {message[0].lower()}{message[1:]}, got {got!r}"


def _section(loc: list[str]) -> type[BaseModel]:
    """The settings class at `loc` (the file itself for an empty one)."""
    model: type[BaseModel] = Settings
    for part in loc:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return model


def _field(loc: list[str]):
    if not loc:
        return None
    return _section(loc[:-1]).model_fields.get(loc[-1])


def _unknown_setting(loc: list[str]) -> str:
    known = list(_section(loc[:-1]).model_fields)
    guess = difflib.get_close_matches(loc[-1], known, n=1)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    where = f"section {'.'.join(loc[:-1])!r} takes" if len(loc) > 1 else "the sections are"
    return f"{'.'.join(loc)}: unknown setting{hint}; {where}: {', '.join(known)}"


def _allowed_range(field) -> str | None:
    """A field's bounds in words: 'in (0, 1]', 'in 0..32', 'at least 1', 'above 0'."""
    if field is None:
        return None
    bounds = {name: getattr(m, name) for m in field.metadata for name in ("gt", "ge", "lt", "le")
              if isinstance(m, annotated_types.BaseMetadata) and hasattr(m, name)}
    low = ("(", bounds["gt"]) if "gt" in bounds else ("[", bounds["ge"]) if "ge" in bounds else None
    high = (")", bounds["lt"]) if "lt" in bounds else ("]", bounds["le"]) if "le" in bounds else None
    if low and high:
        if field.annotation is int and low[0] == "[" and high[0] == "]":
            return f"in {low[1]}..{high[1]}"
        return f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f"at least {low[1]}" if low[0] == "[" else f"above {low[1]}"
    if high:
        return f"at most {high[1]}" if high[0] == "]" else f"below {high[1]}"
    return None


def save_settings(home: Path, settings: Settings) -> Path:
    from vsearch_pipeline.core.storage import write_atomically  # pyarrow: not for `vsearch --help`

    home.mkdir(parents=True, exist_ok=True)
    path = home / SETTINGS_FILE
    # whole or not at all: a run killed while saving must not leave half a settings file
    write_atomically(str(path), yaml.safe_dump(settings.model_dump(), sort_keys=False).encode())
    return path


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
