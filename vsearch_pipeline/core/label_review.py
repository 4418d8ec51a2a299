"""Likely label mistakes: images whose nearest images carry another label.

A label is an image's folder (its path's parent) or, where a person gave one, a tag
`label:<name>` (accepting a suggestion in the web page writes exactly that tag). Each image's
`LABEL_NEIGHBOURS` nearest images vote for their labels, weighted by cosine ** 3 so that the
closest count most. An image is flagged when none of them carries its own label and at least
`min_confidence` of the weight goes to one other label: that label is the suggestion and its
share the confidence. A label carried by fewer than `MIN_LABEL_MEMBERS` images (a folder of one
odd file) is not reviewed: no neighbour could share it.

Why "none carries its own label": on Caltech-101 with 2% of the photos moved to wrong folders
(docs/operations.md, "Label mistakes"), the images that a plain majority flags wrongly are
mostly classes that look alike (ketch and schooner, lotus and water lily, chair and
wheelchair), whose members still have a few neighbours of their own class; a moved photo has
none. Requiring that cut the false flags by two thirds for 3% of the recall.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LABEL_NEIGHBOURS = 20
MIN_LABEL_MEMBERS = 3  # a label this rare cannot be among anyone's neighbours: not reviewed
LABEL_TAG_PREFIX = "label:"
VOTE_POWER = 3


@dataclass(frozen=True)
class LabelReview:
    """Per image: its label (None: unlabelled), the label its neighbours suggest and with what
    share of their votes, the share for its own label, and whether it is flagged."""

    labels: list[str | None]
    suggested: list[str | None]
    confidence: np.ndarray  # (n,) share of the neighbours' votes for the suggestion
    own_share: np.ndarray  # (n,) share for the image's own label
    flagged: np.ndarray  # (n,) bool

    def flagged_rows(self) -> list[int]:
        """The flagged images, most confident first."""
        rows = np.flatnonzero(self.flagged)
        return rows[np.argsort(-self.confidence[rows], kind="stable")].tolist()


def folder_label(path: str) -> str | None:
    """The folder an image lies in, relative to the source (None at the top level)."""
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    return parent or None


def image_labels(paths: Sequence[str], tags: Sequence[Sequence[str]]) -> list[str | None]:
    """A `label:` tag where an image has one (the last, sorted), else its folder."""
    labels = []
    for path, own in zip(paths, tags, strict=True):
        given = sorted(t[len(LABEL_TAG_PREFIX):] for t in own if t.startswith(LABEL_TAG_PREFIX))
        labels.append(given[-1] if given and given[-1] else folder_label(path))
    return labels


def review_labels(labels: Sequence[str | None], cosine: np.ndarray, rows: np.ndarray,
                  min_confidence: float) -> LabelReview:
    """Votes of each image's nearest images (cosines and rows best first, itself left out)."""
    n = len(labels)
    names = sorted({label for label in labels if label is not None})
    code = {name: i for i, name in enumerate(names)}
    given = np.array([code.get(label, -1) if label is not None else -1 for label in labels])
    k = min(LABEL_NEIGHBOURS, cosine.shape[1]) if n else 0
    suggested: list[str | None] = [None] * n
    confidence, own_share = np.zeros(n, np.float32), np.zeros(n, np.float32)
    flagged = np.zeros(n, bool)
    if k == 0 or len(names) < 2:
        return LabelReview(list(labels), suggested, confidence, own_share, flagged)
    voters = given[rows[:, :k]]
    weight = np.maximum(cosine[:, :k].astype(np.float64), 0.0) ** VOTE_POWER
    weight[voters < 0] = 0.0  # unlabelled neighbours do not vote
    total = weight.sum(axis=1)
    for i in np.flatnonzero((given >= 0) & (total > 0)):
        shares = np.bincount(voters[i][voters[i] >= 0], weight[i][voters[i] >= 0],
                             minlength=len(names)) / total[i]
        own_share[i] = shares[given[i]]
        shares[given[i]] = -1.0
        best = int(np.argmax(shares))
        suggested[i], confidence[i] = names[best], shares[best]
    members = np.bincount(given[given >= 0], minlength=len(names))
    reviewed = (given >= 0) & (members[np.maximum(given, 0)] >= MIN_LABEL_MEMBERS)
    flagged = (own_share == 0) & (confidence >= min_confidence) & reviewed
    return LabelReview(list(labels), suggested, confidence, own_share, flagged)


def flag_scores(flagged: np.ndarray, wrong: np.ndarray) -> dict[str, float]:
    """Precision and recall of the flagged images against the ones known to be wrong."""
    hits = int((flagged & wrong).sum())
    return {"flagged": int(flagged.sum()), "wrong": int(wrong.sum()),
            "precision": hits / max(int(flagged.sum()), 1), "recall": hits / max(int(wrong.sum()), 1)}
