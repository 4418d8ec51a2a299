"""Nearest images to a query image (a file, bytes, an optional crop of them, or an id).

The model is rebuilt from the index's own build record, so a query is embedded exactly as the
collection was; an index whose installed model has another version is refused when it is
loaded. The model itself is loaded on first use (or ahead, by `load_model`): a search by an image
already in the index never needs it, nor torch.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from vsearch_pipeline.core.catalog import LoadedIndex, load_index
from vsearch_pipeline.core.decode import (
    DEFAULT_MAX_PIXELS,
    MAX_ASPECT_RATIO,
    aspect_ratio_allowed,
    aspect_ratio_text,
    decode_rgb,
)
from vsearch_pipeline.core.model_spec import LEGACY_VIEW, OPEN_CLIP_PREFIX, ModelSpec
from vsearch_pipeline.core.model_version import model_version
from vsearch_pipeline.core.relevance import (
    SAMPLE_SIZE,
    match_floor,
    pair_scores,
    sample_positions,
    tail_floor,
)
from vsearch_pipeline.core.sources import read_object
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.core.text_search import AttachedTextIndex, SentenceEncoder

if TYPE_CHECKING:  # torch loads with the model, on first use, not with this module
    from vsearch_pipeline.core.models import EmbeddingModel

RECONSTRUCTABLE = ("flat", "hnsw", "ivf-flat")  # index types that hold the exact vectors


def parse_bbox(text: str | None) -> tuple[int, int, int, int] | None:
    """'x1,y1,x2,y2' in pixels of the (EXIF-oriented) image, or None. ValueError for anything
    else, NaN and infinities (`inf`, `1e400`) included: those are no pixel positions."""
    if text is None or not text.strip():
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"bbox must be four numbers x1,y1,x2,y2, got {text!r}") from None
    if len(values) != 4:
        raise ValueError(f"bbox must be four numbers x1,y1,x2,y2, got {text!r}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"bbox must be four finite numbers x1,y1,x2,y2 (no NaN or infinity), "
                         f"got {text!r}")
    return tuple(round(v) for v in values)


def crop(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    x1, y1, x2, y2 = box
    if not (0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height):
        raise ValueError(f"bbox {x1},{y1},{x2},{y2} is empty or outside the "
                         f"{image.width}x{image.height} image")
    if not aspect_ratio_allowed(x2 - x1, y2 - y1):
        raise ValueError(f"bbox {x1},{y1},{x2},{y2} is a strip of "
                         f"{aspect_ratio_text(x2 - x1, y2 - y1)}, over the limit of "
                         f"{MAX_ASPECT_RATIO}:1")
    return image.crop(box)


@contextmanager
def one_openmp_thread() -> Iterator[None]:
    """One query is searched by one thread whatever OpenMP is given, and in a request thread the
    rest of OpenMP's team only spins (measured: /similar at 4 connections went from 17-200
    requests/s to 226). The setting belongs to the calling thread; it is restored after."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def query_encoder(spec: ModelSpec) -> EmbeddingModel:
    """The fastest measured encoder of `spec` on this CPU (for the default model, its cached graph
    without torch)."""
    from vsearch_pipeline.core.models import load_model

    return load_model(spec, "cpu", engine="auto")


@dataclass
class Searcher:
    loaded: LoadedIndex
    spec: ModelSpec  # the model the index was built with
    source_endpoint_url: str | None = None
    sentence_encoder: SentenceEncoder | None = None  # text search for a model without text tower
    _model: EmbeddingModel | None = field(default=None, repr=False)
    _model_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _attached: AttachedTextIndex | None = field(default=None, repr=False)
    _attached_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _sentences_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _floors: dict[str, float | None] = field(default_factory=dict, repr=False)

    @classmethod
    def from_build(cls, store: ArtifactStore, build: dict, source_endpoint_url: str | None = None,
                   model: EmbeddingModel | None = None,
                   sentence_encoder: SentenceEncoder | None = None) -> Searcher:
        """Load the index version `build` records; `model` is reused when it is the one the
        index was built with. ValueError when the installed model has another version."""
        spec = ModelSpec(build["model"], build.get("pretrained"), build.get("view", LEGACY_VIEW),
                         build.get("int8", False))
        installed = model_version(spec)
        if installed != build["model_version"]:
            raise ValueError(f"index {build['version']} was built with model version "
                             f"{build['model_version']!r}, but {installed!r} is installed")
        reused = model if model is not None and model.spec == spec else None
        return cls(load_index(store, build), spec, source_endpoint_url, sentence_encoder, reused)

    @property
    def model(self) -> EmbeddingModel:
        """The image encoder, loaded on first use (once, whichever thread asks first)."""
        with self._model_lock:
            if self._model is None:
                self._model = query_encoder(self.spec)
            return self._model

    @property
    def loaded_model(self) -> EmbeddingModel | None:
        """The image encoder if it is loaded already (for reuse, and for /health)."""
        return self._model

    @property
    def text_ready(self) -> bool:
        """Whether a text query is answered without loading a model first."""
        if self.text_mode == "clip":
            return self._model is not None
        return self._attached is not None

    @property
    def model_version(self) -> str:
        """The version of the model the index was built with (and that is installed)."""
        return self.loaded.build["model_version"]

    @property
    def version(self) -> str:
        return self.loaded.version

    def embed_bytes(self, data: bytes, box: tuple[int, int, int, int] | None = None,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """The image's vector in the index's space: the model's vector through the index's
        transform (whitening), as every indexed vector was."""
        if box is None:
            image = decode_rgb(data, max_pixels, min_size=self.model.decode_min_size)
        else:
            image = crop(decode_rgb(data, max_pixels), box)
        return self.loaded.transform.apply(self.model.embed_images([image]))[0]

    def by_image(self, data: bytes, k: int, box: tuple[int, int, int, int] | None = None
                 ) -> list[dict]:
        return self.by_vector(self.embed_bytes(data, box), k)

    def by_id(self, image_id: str, k: int, only: list[str] | None = None) -> list[dict]:
        position = self.loaded.position_of.get(image_id)
        if position is None:
            raise KeyError(f"no image with id {image_id!r} in index {self.version}")
        return self.by_vector(self.stored_vector(position), k, exclude=position, only=only)

    def stored_vector(self, position: int) -> np.ndarray:
        """The indexed vector, or (for PQ codes, which are approximate) the image embedded again."""
        if self.loaded.build["params"]["index_type"] in RECONSTRUCTABLE:
            return self.loaded.index.reconstruct(position)
        uri = self.loaded.id_map.column("uri")[position].as_py()
        return self.embed_bytes(read_object(uri, self.source_endpoint_url))

    def by_vector(self, vector: np.ndarray, k: int, exclude: int | None = None,
                  only: list[str] | None = None) -> list[dict]:
        """The k nearest; with `only`, among those ids alone (a tag filter)."""
        wanted = k + (exclude is not None)
        with one_openmp_thread():
            if only is None:
                scores, positions = self.loaded.search(vector[None, :], wanted)
            else:
                allowed = np.array([p for p in map(self.loaded.position_of.get, only) if p is not None])
                if not len(allowed):
                    return []
                from vsearch_pipeline.core.index import IndexParams, filtered_search

                params = IndexParams(**self.loaded.build["params"])
                scores, positions = filtered_search(self.loaded.index, params, vector, wanted, allowed)
        kept = [(pos, score) for score, pos in zip(scores[0], positions[0], strict=True)
                if pos >= 0 and pos != exclude]
        return self._rows(kept[:k])

    def match_floor(self, kind: str) -> float | None:
        """The score below which a result of an `image` or a `text` query does not match
        (core.relevance), measured once per index version; None for a tiny collection, and for
        text through a CLIP text tower (its scores are not yet measured against a background)."""
        if kind not in self._floors:
            self._floors[kind] = self._measured_floor(kind)
        return self._floors[kind]

    def _measured_floor(self, kind: str) -> float | None:
        n = self.loaded.index.ntotal
        if kind == "image":
            return match_floor(pair_scores(self.loaded.stored_vectors(sample_positions(n))))
        if self.text_mode == "clip":
            return None
        return tail_floor(self.attached_text().unrelated_scores(
            sample_positions(n, SAMPLE_SIZE // 8), sample_positions(n)))

    def _rows(self, ranked: Sequence[tuple[int, float]]) -> list[dict]:
        table = self.loaded.id_map
        return [{"rank": rank, "id": table.column("id")[pos].as_py(), "score": round(float(score), 6),
                 "uri": table.column("uri")[pos].as_py(), "path": table.column("path")[pos].as_py()}
                for rank, (pos, score) in enumerate(ranked, start=1)]

    def describe(self, ids: Sequence[str]) -> list[dict]:
        """Where each image is (`id`, `uri`, `path`; None for an id the index does not hold)."""
        table, position_of = self.loaded.id_map, self.loaded.position_of
        rows = []
        for image_id in ids:
            pos = position_of.get(image_id)
            rows.append({"id": image_id,
                         "uri": None if pos is None else table.column("uri")[pos].as_py(),
                         "path": None if pos is None else table.column("path")[pos].as_py()})
        return rows

    def best_label(self, image_id: str) -> str | None:
        labels = self.loaded.labels_of(image_id)
        return labels[0] if labels else None

    @property
    def text_mode(self) -> str:
        """'clip': the model's text tower; 'attached_text': the words attached to the images."""
        return "clip" if self.spec.name.startswith(OPEN_CLIP_PREFIX) else "attached_text"

    def embed_text(self, text: str) -> np.ndarray:
        if self.text_mode == "clip":  # into the index's space, as image queries are
            return self.loaded.transform.apply(self.model.embed_text([text]))[0]
        return self._sentences().encode([text])[0]

    def by_text(self, query: np.ndarray, k: int, only: list[str] | None = None,
                tags: Mapping[str, Sequence[str]] | None = None) -> list[dict]:
        """The k best images for an embedded text query (`embed_text`). In 'attached_text' mode
        `tags` (tag -> ids) count as words of their images, and images matching nothing are left
        out; each result says which phrase matched."""
        if self.text_mode == "clip":
            return self.by_vector(query, k, only=only)
        position_of = self.loaded.position_of
        tags = tags or {}
        tagged = {tag: [position_of[i] for i in ids if i in position_of] for tag, ids in tags.items()}
        scores = self.attached_text().scores(query, tagged)
        if only is not None:
            mask = np.zeros(len(scores), bool)
            mask[[p for p in map(position_of.get, only) if p is not None]] = True
            scores = np.where(mask, scores, 0)
        order = np.argsort(-scores, kind="stable")[:k]
        rows = self._rows([(int(p), float(scores[p])) for p in order if scores[p] > 0])
        tags_of: dict[str, list[str]] = {}
        for tag, ids in tags.items():
            for image_id in ids:
                tags_of.setdefault(image_id, []).append(tag)
        for row in rows:
            row["matched"] = self.attached_text().matched_phrase(
                position_of[row["id"]], query, tags_of.get(row["id"], ()))
        return rows

    def attached_text(self) -> AttachedTextIndex:
        """Built on first use from the id map's paths and predicted classes."""
        with self._attached_lock:
            if self._attached is None:
                table = self.loaded.id_map
                probs = (table.column("label_probs").to_pylist()
                         if "label_probs" in table.column_names else None)
                self._attached = AttachedTextIndex(self._sentences(), self.loaded.paths,
                                                   self.loaded.labels, probs)
            return self._attached

    def _sentences(self) -> SentenceEncoder:
        """Loaded once: the service's background warm-up and a first text query may both ask."""
        with self._sentences_lock:
            if self.sentence_encoder is None:
                self.sentence_encoder = SentenceEncoder()
            return self.sentence_encoder
