"""The parameters of the index and the clustering, declared once, light to import.

Each class here is the core's own parameter object (a frozen dataclass that the core builds,
compares and records as a dict) and, at the same time, the declaration of its settings: each
field's type, default and bounds (pydantic's `Field` in the annotation). The settings sections of
vsearch_pipeline.settings inherit these fields instead of repeating them, so a bound written here
is the one a `vsearch.yaml` is checked against. Constructing a dataclass checks nothing (the core
and its tests build them freely); `validate_index_params` and `validate_cluster_params` check the
declared bounds and the rules between fields, and run on every settings load.

Nothing here imports FAISS, scipy or torch: the settings load with it in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import cache
from typing import Annotated, Any

import annotated_types
from pydantic import Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

INDEX_TYPES = ("flat", "hnsw", "ivf-flat", "ivf-pq")
HNSW_STORAGES = ("Flat", "SQfp16", "SQ8", "SQ4")
CLUSTER_METHODS = ("hdbscan", "kmeans")
REDUCTIONS = ("none", "pca", "umap")
C_INT_MAX = 2**31 - 1  # what FAISS takes for its build and search parameters
SEED_MAX = 2**32 - 1  # what numpy and scikit-learn take as a random_state

FaissInt = Annotated[int, Field(ge=1, le=C_INT_MAX)]


@dataclass(frozen=True)
class IndexParams:
    """How the FAISS index is built and searched (see vsearch_pipeline.core.index)."""

    index_type: str = "hnsw"
    M: Annotated[int | None, Field(ge=1, le=C_INT_MAX)] = None
    efConstruction: FaissInt = 200
    efSearch: FaissInt = 128
    nlist: Annotated[int | None, Field(ge=1, le=C_INT_MAX)] = None
    nprobe: FaissInt = 16
    nbits: Annotated[int, Field(ge=1, le=16)] = 8
    opq: bool = False
    fast_scan: bool = False
    storage: str = "Flat"
    refine: bool = False
    k_factor: Annotated[float, Field(ge=1.0)] = 4.0  # candidates per result re-ranked by refine

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ClusterParams:
    """How the embeddings are clustered (see vsearch_pipeline.core.cluster)."""

    method: str = "hdbscan"
    reduce: str = "pca"
    n_components: Annotated[int, Field(ge=2)] = 32
    min_cluster_size: Annotated[int | None, Field(ge=2)] = None  # None: chosen from the data
    min_samples: Annotated[int | None, Field(ge=1)] = None
    n_clusters: Annotated[int | None, Field(ge=2)] = None  # kmeans; default sqrt(n / 2)
    seed: Annotated[int, Field(ge=0, le=SEED_MAX)] = 0

    def as_dict(self) -> dict:
        return asdict(self)


def validate_index_params(params: IndexParams) -> None:
    """A ValueError naming the setting (`index.<field>`) for the first problem, if any."""
    check_declared(params, "index")
    if params.index_type not in INDEX_TYPES:
        raise ValueError(f"index.index_type must be one of {INDEX_TYPES}, got {params.index_type!r}")
    # The options that only mean something for some types are refused elsewhere, so a setting
    # that would be silently ignored is a mistake the user hears about.
    if params.storage not in HNSW_STORAGES:
        raise ValueError(f"index.storage must be one of {HNSW_STORAGES}, got {params.storage!r}")
    if params.storage != "Flat" and params.index_type != "hnsw":
        raise ValueError("index.storage applies to index_type hnsw only (ivf-pq stores PQ codes)")
    if params.fast_scan and (params.index_type != "ivf-pq" or params.nbits != 4):
        raise ValueError("index.fast_scan needs index_type ivf-pq with nbits 4 (PQ{M}x4fs)")
    if params.refine and params.index_type == "flat":
        raise ValueError("index.refine re-ranks an approximate index; flat is already exact")


def validate_cluster_params(params: ClusterParams) -> None:
    """A ValueError naming the setting (`clusters.<field>`) for the first problem, if any."""
    check_declared(params, "clusters")
    if params.method not in CLUSTER_METHODS:
        raise ValueError(f"clusters.method must be one of {CLUSTER_METHODS}, got {params.method!r}")
    if params.reduce not in REDUCTIONS:
        raise ValueError(f"clusters.reduce must be one of {REDUCTIONS}, got {params.reduce!r}")


def check_declared(params: Any, section: str) -> None:
    """`params` (a dataclass of this module, or a section built on one) against the types and
    bounds its fields declare; the first problem as a ValueError naming `section.field`."""
    cls = next(c for c in type(params).__mro__ if "__dataclass_fields__" in vars(c))
    values = {f.name: getattr(params, f.name) for f in dataclasses.fields(cls)}
    try:
        _adapter(cls).validate_python(values)
    except ValidationError as err:
        first = err.errors()[0]
        name, got = first["loc"][0], first["input"]
        hint = typing.get_type_hints(cls, include_extras=True)[name]  # Annotated[type, Field]
        metadata = [m for info in getattr(hint, "__metadata__", ()) if isinstance(info, FieldInfo)
                    for m in info.metadata]
        kind = typing.get_args(hint)[0] if metadata else None
        allowed = bounds_in_words(metadata, integer=int in (kind, *typing.get_args(kind)))
        if allowed and first["type"].startswith(("greater_than", "less_than")):
            raise ValueError(f"{section}.{name} must be {allowed}, got {got!r}") from None
        message = first["msg"][0].lower() + first["msg"][1:]
        raise ValueError(f"{section}.{name}: {message}, got {got!r}") from None


@cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def bounds_in_words(metadata: Iterable[Any], integer: bool = False) -> str | None:
    """The bounds among a field's metadata in words: 'in (0, 1]', 'in 0..32' (integers),
    'at least 1', 'above 0'; None when it has none."""
    bounds = {name: getattr(m, name) for m in metadata for name in ("gt", "ge", "lt", "le")
              if isinstance(m, annotated_types.BaseMetadata) and hasattr(m, name)}
    low = ("(", bounds["gt"]) if "gt" in bounds else ("[", bounds["ge"]) if "ge" in bounds else None
    high = (")", bounds["lt"]) if "lt" in bounds else ("]", bounds["le"]) if "le" in bounds else None
    if low and high:
        if integer and low[0] == "[" and high[0] == "]":
            return f"in {low[1]}..{high[1]}"
        return f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f"at least {low[1]}" if low[0] == "[" else f"above {low[1]}"
    if high:
        return f"at most {high[1]}" if high[0] == "]" else f"below {high[1]}"
    return None
