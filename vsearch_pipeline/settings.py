"""Settings of a vsearch home: one YAML file, read into validated sections.

A home folder holds everything a collection needs: ``vsearch.yaml`` (these settings),
``artifacts/`` (manifests, embeddings, indexes, clusters), ``vsearch.duckdb`` (hashes, groups and
metrics) and ``dagster/`` (the Dagster instance). Every setting is documented in README.md.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from vsearch_pipeline.core.decode import DEFAULT_MAX_PIXELS
from vsearch_pipeline.core.engines import ENGINES, validate_engine, validate_int8
from vsearch_pipeline.core.image_quality import QualityThresholds
from vsearch_pipeline.core.layout import HomeLayout
from vsearch_pipeline.core.map_layout import MAP_METHODS
from vsearch_pipeline.core.model_spec import (
    DEFAULT_MODEL,
    DEVICES,
    LEGACY_VIEW,
    PRECISIONS,
    VIEWS,
    ModelSpec,
    default_int8,
    validate_settings,
)
from vsearch_pipeline.core.params import (
    CLUSTER_METHODS,
    HNSW_STORAGES,
    INDEX_TYPES,
    REDUCTIONS,
    ClusterParams,
    IndexParams,
    bounds_in_words,
    validate_cluster_params,
    validate_index_params,
)
from vsearch_pipeline.core.retrieval import RERANKERS, NearDuplicateFloor, QueryExpansionK, QueryPlan
from vsearch_pipeline.core.sampling import SUBSET_MODES
from vsearch_pipeline.core.text_files import TextFileError, read_text

INT64_MAX = 2**63 - 1  # what DuckDB, Parquet, numpy and Dagster metadata hold
_INT64_RANGE = f"at most {INT64_MAX} (a 64-bit integer)"


class SettingsError(ValueError):
    """Settings that cannot be used: one line per problem, each naming the setting (e.g.
    `index.index_type`) and what it may be, so that a run fails before any work starts.
    `given` is what was read (the file with the overrides merged in), when it was a mapping."""

    def __init__(self, message: str, given: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.given = given or {}


class Section(BaseModel):
    """A settings section; unknown keys are refused (a typo must not be ignored), and so are
    values that would not survive the run: booleans where a number goes (YAML reads `yes`, `no`,
    `on` and `off` as booleans, which pydantic would take as 1 and 0), NaN and infinities (YAML
    `.nan`, `.inf`, `1e400`) and integers past 64 bits.

    Plain pydantic, not Dagster's Config: everything that reads settings (the `vsearch` command,
    the search service) loads without Dagster. vsearch_pipeline.resources derives the Dagster
    Config of each section the pipeline's resources take."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _wants_number(field.annotation) and _has_boolean(value):
            raise ValueError(f"must be a number, got {value!r} (YAML reads yes, no, on and off as "
                             "booleans)")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _fits_64_bits(cls, value: Any) -> Any:
        values = value if isinstance(value, list) else [value]
        if any(type(v) is int and abs(v) > INT64_MAX for v in values):
            raise ValueError(f"must be {_INT64_RANGE}, got {value!r}")
        return value


def _has_boolean(value: Any) -> bool:
    return any(isinstance(v, bool) for v in (value if isinstance(value, list) else [value]))


def _wants_number(annotation: Any) -> bool:
    """Whether a field's type takes an int or a float (alone, optional, or in a list)."""
    return annotation in (int, float) or any(map(_wants_number, typing.get_args(annotation)))


def _choices(section: str, allowed: dict[str, tuple[str, ...]]) -> Any:
    """A field validator for the section's choices, each checked on its own: pydantic runs a
    section's model validator only when every field of it is valid, so a wrong choice checked
    there alone was heard of only once the section's other mistakes were mended. The model
    validators still check the combinations. None (a model's own view) is always allowed."""

    def known(cls: type, value: Any, info: ValidationInfo) -> Any:
        choices = allowed[info.field_name or ""]
        if value is not None and value not in choices:
            raise ValueError(f"{section}.{info.field_name} must be one of {choices}, got {value!r}")
        return value

    return field_validator(*allowed)(classmethod(known))


def _fields_of(section: BaseModel, params: type) -> dict[str, Any]:
    """The section's values of the fields it inherits from the core's dataclass `params`."""
    return {name: getattr(section, name) for name in params.__dataclass_fields__}


class SourceSettings(Section):
    uri: str | None = None
    endpoint_url: str | None = None


class StorageSettings(Section):
    root: str | None = None  # default: <home>/artifacts
    endpoint_url: str | None = None


class ModelSettings(Section):
    name: str = DEFAULT_MODEL
    pretrained: str | None = None
    view: str | None = None  # centre_crop | whole | regions | centre_region; None: regions, or
    # centre_crop for open_clip
    int8: bool | None = None  # None: int8 for efficientnet-lite0, float for open_clip models
    batch_size: int = Field(32, ge=1, le=4096)
    device: str = "cpu"
    precision: str = "fp32"
    engine: str = "auto"  # auto | torch | onnx | openvino: see vsearch_pipeline.core.engines

    @field_validator("name")
    @classmethod
    def _known_name(cls, name: str) -> str:
        """The name alone: checked beside values that pass every other check of the model."""
        if name != DEFAULT_MODEL:
            validate_settings(ModelSpec(name, "random", LEGACY_VIEW), "cpu", "fp32")
        return name

    _known_choice = _choices("model", {"view": VIEWS, "device": DEVICES, "precision": PRECISIONS,
                                       "engine": ENGINES})

    @model_validator(mode="after")
    def _runnable(self) -> ModelSettings:
        """A model, view, device, precision or engine that cannot run fails at load, not mid-run.
        Cheap for the default model; `device: cuda` imports torch to ask for a device."""
        validate_engine(self.engine, self.name, self.device, self.precision)
        validate_int8(self.engine, self.spec.int8)
        validate_settings(self.spec, self.device, self.precision)
        return self

    @property
    def spec(self) -> ModelSpec:
        """The model's identity; int8 unset means int8 where it can run (the default model on
        the CPU in fp32 with engine auto or onnx), float otherwise."""
        int8 = self.int8 if self.int8 is not None else (
            default_int8(self.name) and self.device == "cpu" and self.precision == "fp32"
            and self.engine in ("auto", "onnx"))
        return ModelSpec(self.name, self.pretrained, self.view, int8)


class ManifestSettings(Section):
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    read_workers: int = Field(4, ge=1, le=64)


class SubsetSettings(Section):
    fraction: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0
    force_include: list[str] = []
    mode: str = "hash"  # hash | diverse (core.sampling)

    _known_choice = _choices("subset", {"mode": SUBSET_MODES})


class NearDuplicateSettings(Section):
    """How near-duplicate groups are found (see vsearch_pipeline.core.near_duplicates)."""

    method: str = "combined"  # combined: pHash and embedding contrast | phash: pHash bits alone
    hamming_threshold: int = Field(8, ge=0, le=32)  # phash: the rule; combined: pHash candidates
    neighbours: int = Field(10, ge=1, le=100)  # combined: nearest images per image taken as candidates
    contrast_threshold: float | None = Field(None, ge=-2.0, le=2.0)  # combined; None: chosen from the data
    cosine_floor: float | None = Field(None, ge=-1.0, le=1.0)  # combined; None: chosen from the data
    partial_copy_checks: int = Field(5, ge=0, le=15)  # combined: pairs per image checked for a crop; 0: none

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        if method == cls.model_fields["method"].default:
            return method  # the check imports scipy and imagehash (a second): not for the default
        from vsearch_pipeline.core.near_duplicates import validate_method

        return validate_method(method)


class IndexSettings(Section, IndexParams):
    """The index's parameters (declared once, with their bounds, by the core's IndexParams) and
    how a built index is checked and when it is trained again."""

    # None: HNSW over 8-bit codes (SQ8), a quarter of float32's memory at the same mAP@10 on
    # Caltech-101 with the default retrieval (docs/search-quality.md); Flat for the other types
    storage: str | None = None
    min_recall: float = Field(0.9, ge=0.0, le=1.0)
    recall_queries: int = Field(1000, ge=1)
    rebuild_growth_ratio: float = Field(0.25, gt=0.0)

    _known_choice = _choices("index", {"index_type": INDEX_TYPES, "storage": HNSW_STORAGES})

    @model_validator(mode="after")
    def _consistent(self) -> IndexSettings:
        """Combinations FAISS would refuse (or silently ignore) fail when the file is read."""
        validate_index_params(self.params())
        return self

    def params(self) -> IndexParams:
        fields = _fields_of(self, IndexParams)
        if fields["storage"] is None:
            fields["storage"] = "SQ8" if self.index_type == "hnsw" else "Flat"
        return IndexParams(**fields)


class RetrievalSettings(Section, QueryPlan):
    """How indexed vectors are post-processed and queries answered (docs/search-quality.md has
    each one's measured effect). All of it is recorded in the index's build.json and followed by
    the search service and the evaluation asset alike. The query side is the core's QueryPlan
    (declared there, with its bounds); the pipeline turns two of its stages on by default."""

    query_expansion_k: QueryExpansionK = 10
    near_duplicate_floor: NearDuplicateFloor = 0.7
    projection_head: bool = False  # a head trained on the collection (asset projection_head)
    projection_head_images: int = Field(10_000, ge=64)  # images it is trained on at most (a seeded sample)
    # PCA-whitening fitted on the collection (asset retrieval_transform), from 24 vectors per
    # kept axis (6,144 at 256): +0.008 mAP@10 on Caltech-101 and a fifth of the dimensions
    whitening: bool = True
    whitening_dims: int = Field(256, ge=2)  # axes kept
    whitening_shrinkage: float = Field(1.0, ge=0.0)  # eigenvalues + shrinkage * their mean
    whitening_power: float = Field(1.0, gt=0.0, le=1.0)  # signed power after whitening (1: none)
    database_augmentation_k: int = Field(10, ge=0, le=100)  # DBA neighbours per indexed vector; 0: off

    @field_validator("rerank")
    @classmethod
    def _known_rerank(cls, rerank: str) -> str:
        if rerank not in RERANKERS:
            raise ValueError(f"retrieval.rerank must be one of {', '.join(RERANKERS)}, "
                             f"got {rerank!r}")
        return rerank

    def query_plan(self) -> QueryPlan:
        return QueryPlan(**_fields_of(self, QueryPlan))

    def transform_settings(self) -> dict:
        """What the fitted whitening depends on: a change means fitting it again (the head is
        compared by its version, which says whether there is one)."""
        return {"whitening": self.whitening, "whitening_dims": self.whitening_dims,
                "whitening_shrinkage": self.whitening_shrinkage,
                "whitening_power": self.whitening_power}


class ClusterSettings(Section, ClusterParams):
    """The clustering's parameters (declared by the core's ClusterParams) and how far the
    clusters may drift before the collection is clustered again."""

    drift_tolerance: float = Field(0.1, gt=0.0)
    map: str = "umap"  # umap | pca: the map's layout (core.map_layout; PCA below 1,000 images)

    _known_choice = _choices("clusters", {"method": CLUSTER_METHODS, "reduce": REDUCTIONS,
                                          "map": MAP_METHODS})

    @model_validator(mode="after")
    def _known_choices(self) -> ClusterSettings:
        validate_cluster_params(self.params())
        return self

    def params(self) -> ClusterParams:
        return ClusterParams(**_fields_of(self, ClusterParams))


class InsightSettings(Section):
    """What the insight asset flags: likely label mistakes and poor files (core.label_review,
    core.image_quality)."""

    label_confidence: float = Field(0.5, gt=0.0, le=1.0)
    blurry_below: float = Field(100.0, ge=0.0)
    dark_below: float = Field(0.15, ge=0.0, le=1.0)
    bright_above: float = Field(0.9, ge=0.0, le=1.0)
    tiny_below: int = Field(64, ge=1)

    def thresholds(self) -> QualityThresholds:
        return QualityThresholds(self.blurry_below, self.dark_below, self.bright_above,
                                 self.tiny_below)


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
    def _cron(cls, value: str, info: ValidationInfo) -> str:
        if value == cls.model_fields[info.field_name or ""].default:
            return value  # Dagster's own rule imports all of Dagster (seconds): not for a default
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
    insight: InsightSettings = InsightSettings()
    serving: ServingSettings = ServingSettings()
    automation: AutomationSettings = AutomationSettings()
    execution: ExecutionSettings = ExecutionSettings()

    def artifacts_root(self, home: Path) -> str:
        """Where the artifacts go: `storage.root`, else the home's artifacts/ folder."""
        return self.storage.root or str(HomeLayout(home).artifacts)

    def check(self) -> Settings:
        """Nothing left to check: every check runs when the settings are read (kept for the
        callers that still ask)."""
        return self


def load_settings(home: Path, overrides: dict[str, Any] | None = None) -> Settings:
    """The home's vsearch.yaml (if any) with `overrides` merged in, section by section."""
    path = HomeLayout(home).settings_file
    data = read_settings_file(path) if path.exists() else {}
    given = _merge(data, overrides or {})
    try:
        return Settings.model_validate(given)
    except ValidationError as err:
        raise SettingsError("\n".join(describe_error(e) for e in err.errors()), given) from None


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


def _allowed_range(field: Any) -> str | None:
    """A field's bounds in words: 'in (0, 1]', 'in 0..32', 'at least 1', 'above 0'."""
    if field is None:
        return None
    return bounds_in_words(field.metadata, integer=field.annotation is int)


def save_settings(home: Path, settings: Settings) -> Path:
    from vsearch_pipeline.core.storage import write_atomically  # pyarrow: not for `vsearch --help`

    home.mkdir(parents=True, exist_ok=True)
    path = HomeLayout(home).settings_file
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
