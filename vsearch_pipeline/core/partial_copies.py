"""Partial copies: a crop of a photo (then maybe resized, re-encoded, mirrored or turned a little)
found as a duplicate of the photo, by local features and verified by agreeing pixels.

A whole-image vector of a crop is far from its original's: the 435 Caltech-101 Faces_easy crops
have a median cosine of 0.86 to their Faces photo, while other shots of the same person in the
same room reach 0.95, so no threshold on vectors separates them (core.near_duplicates). The
original is near in rank, though: within the 15 nearest images by the retrieval vectors, one
way or the other, for 93% of the crops. So:

1. **Candidates** (`candidate_pairs`): each image's `CROP_NEIGHBOURS` nearest images by the
   retrieval vectors, both ways, without the pairs the groups already join; of those, each
   image's nearest, then the most similar, ``checks_per_image * n`` in all. That is a budget
   rather than a threshold: the work grows with the collection, not with how alike its
   images are.
2. **Local features** (`features`): ORB keypoints (Rublee et al. 2011, up to `KEYPOINTS`) of the
   grey image at `SIDE` pixels on its longer side, matched by Hamming distance with Lowe's ratio
   test, and an affine transform fitted by RANSAC with at least `MIN_INLIERS` inliers. ORB turns
   with the image but does not mirror, so a pair that fails is tried again with one image
   mirrored.
3. **Agreeing pixels** (`pixel_agreement`): the transform refined by ECC (Evangelidis and
   Psarakis 2008) and the two images compared where they overlap, in the frame of the one with
   fewer pixels per detail: the correlation of their Laplacians after a one-pixel blur. Fine
   detail survives a resize or a re-encode and is what another shot of the same scene lacks:
   the person has moved a little, the background has not.

The same check is a second opinion on the pairs that only the combined rule's contrast joined
(core.duplicate_groups): a pair whose keypoints agree on part of it (fewer than
`OTHER_SHOT_INLIERS` inliers) while its pixels disagree (below `OTHER_SHOT_AGREEMENT`) is
another shot of the same scene and is not joined. Of the 394 such pairs on Caltech-101 it
turns away 42. Of the 8 of them looked at by eye, 6 are other photos of the same thing
(consecutive shots, the same motorbike from another angle, another watch of the same model
on the same page) and 2 are edits of a photo with something added (a muzzle flash, two
candles); they include 2 of the 4 consecutive shots of one person that made the Faces pairs
wrong. Smooth images (drawings, the moon) are left alone: their pixel detail is mostly noise.
Copies that were turned into black corners or had their background swapped keep many inliers
(142 to 355), and recoloured, framed or labelled copies agree between 0.5 and 0.82, as
consecutive shots of one person can (0.4 to 0.75): no stricter rule keeps the first.

Measured on the Faces_easy crops against their 30 nearest images (435 crops, 12,645 pairs):
the Laplacian correlation of the true originals is at least 0.862 for 99% of them, the
highest of any other pair is 0.785; plain grey-level correlation without the ECC refinement
cannot separate them (0.974 keeps 90% of the crops and lets 19 other shots in). Hence
`AGREEMENT`. Two whole frames (each covers `WHOLE_FRAME` of the other) join only above
`WHOLE_FRAME_AGREEMENT`: views of a turntable object 5 degrees apart (COIL-20) agree with a
median of 0.87, and joined they would chain all 72 views of an object into one group; a
resized copy of dedup_cases agrees at 0.97. Everything here is pixel geometry, not a
property of the collection, so none of it is chosen from the data.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from threading import Lock

import cv2
import numpy as np

from vsearch_pipeline.core.decode import ImageError, decode_rgb
from vsearch_pipeline.core.hashing import group_labels
from vsearch_pipeline.core.near_duplicates import nearest_neighbours

SIDE = 320  # longer side of the grey image the features and the pixel comparison use
KEYPOINTS = 500  # ORB keypoints per image at most
ORB_SCALE, ORB_LEVELS = 1.3, 5  # scale pyramid: 5 levels of 1.3 cover a 2.9x change of scale
FEW_KEYPOINTS = 100  # fewer at ORB's usual FAST threshold (20): look again at a lower one
SMOOTH_FAST_THRESHOLD = 5
RATIO = 0.8  # Lowe's ratio test: best match at most this share of the second best's distance
RANSAC_PIXELS = 3.0  # a match is an inlier within this many pixels of the fitted transform
MIN_INLIERS = 12  # fewer inliers: no common region worth comparing
MAX_SCALE = 8.0  # a transform that shrinks or grows more than this is no copy at SIDE pixels
MAX_SHEAR = 2.0  # ratio of the transform's two stretch factors: copies are near-similarities
MIN_OVERLAP = 2_000  # overlapping pixels below this: too small a region to judge
ECC_STEPS = 10  # the keypoints' transform is close: 30 steps agree with 10 on every measured pair
ROUGH_AGREEMENT = 0.3  # below this before ECC: no copy (99.5% of the crops are above, 7% of others)
AGREEMENT = 0.82  # Laplacian correlation of copies after ECC (module docstring)
OTHER_SHOT_INLIERS, OTHER_SHOT_AGREEMENT = 100, 0.5  # Check.other_shot (module docstring)
WHOLE_FRAME = 0.9  # each image covering this share of the other: whole frames, no crop
WHOLE_FRAME_AGREEMENT = 0.93  # whole frames join above this (Check.joins)
CROP_NEIGHBOURS = 15  # nearest images per image that may be its crop or its original
CACHE_IMAGES = 2_048  # decoded images kept while pairs are checked
# What a stored check's result depends on: a change here makes the checks of earlier runs stale.
CHECKS_VERSION = (f"orb{KEYPOINTS}-{ORB_SCALE}x{ORB_LEVELS}-few{FEW_KEYPOINTS}-"
                  f"fast{SMOOTH_FAST_THRESHOLD}-side{SIDE}-ratio{RATIO}-ransac{RANSAC_PIXELS}-"
                  f"inliers{MIN_INLIERS}-ecc{ECC_STEPS}-rough{ROUGH_AGREEMENT}-v3")


@dataclass(frozen=True)
class Features:
    """One image's grey pixels and ORB keypoints, as read for checking pairs."""

    pixels: np.ndarray  # uint8, longer side at most SIDE
    points: np.ndarray  # (n, 2) float32 keypoint positions
    descriptors: np.ndarray | None  # (n, 32) uint8; None: no keypoint found
    smooth: bool = False  # too few corners at the usual threshold: its pixel detail is weak


@dataclass(frozen=True)
class Check:
    """What checking one pair found: inliers, pixel agreement (NaN: not compared), whether one
    image was mirrored, and whether either is smooth."""

    inliers: int
    agreement: float
    mirrored: bool
    smooth: bool = False
    coverage: float = float("nan")  # the share of the less covered image the other one covers

    @property
    def copy(self) -> bool:
        """The pixels agree: one image holds the other, or a region of it."""
        return self.agreement >= AGREEMENT

    @property
    def joins(self) -> bool:
        """A copy to join: of a part (one image leaves out a region of the other), or two whole
        frames whose pixels agree closely (a re-encode, a smaller copy). Whole frames that
        agree only as well as a crop's must are often not copies at all: a turntable's views 5
        degrees apart (COIL-20, median 0.87), which would chain every view of an object."""
        return self.copy and bool(self.coverage < WHOLE_FRAME
                                  or self.agreement >= WHOLE_FRAME_AGREEMENT)

    @property
    def other_shot(self) -> bool:
        """Keypoints agree on part of the two images, but their pixels do not: another shot of
        the same scene (the room is still, the person moved), not a copy (module docstring)."""
        return (not self.smooth and self.inliers < OTHER_SHOT_INLIERS
                and bool(self.agreement < OTHER_SHOT_AGREEMENT))


_ORB = cv2.ORB_create(nfeatures=KEYPOINTS, scaleFactor=ORB_SCALE, nlevels=ORB_LEVELS)
_SMOOTH_ORB = cv2.ORB_create(nfeatures=KEYPOINTS, scaleFactor=ORB_SCALE, nlevels=ORB_LEVELS,
                             fastThreshold=SMOOTH_FAST_THRESHOLD)
_MATCHER = cv2.BFMatcher(cv2.NORM_HAMMING)


def image_reader(read: Callable[[str], bytes], where: dict[str, tuple[str, str]]
                 ) -> Callable[[str], np.ndarray | None]:
    """An image's RGB array by id (its file found in `where`, id -> (URI, path)), decoded no
    larger than the checks need; None when it no longer reads or decodes."""
    def rgb(image_id: str) -> np.ndarray | None:
        try:
            return np.asarray(decode_rgb(read(where[image_id][0]), min_size=SIDE))
        except (ImageError, OSError, KeyError):
            return None
    return rgb


def grey_pixels(rgb: np.ndarray) -> np.ndarray:
    """Grey uint8 copy of an RGB array, shrunk (area average) to at most SIDE on its longer side."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    return _resized(grey, min(1.0, SIDE / max(grey.shape)), cv2.INTER_AREA)


def _resized(pixels: np.ndarray, scale: float, interpolation: int) -> np.ndarray:
    if scale == 1:
        return pixels
    h, w = pixels.shape
    return cv2.resize(pixels, (max(1, round(w * scale)), max(1, round(h * scale))),
                      interpolation=interpolation)


def features(pixels: np.ndarray) -> Features:
    """ORB keypoints of grey pixels, found on a copy enlarged to SIDE where they are smaller
    (ORB's pyramid only shrinks, and a small copy's corners are too few at its own size); where
    the usual corner threshold finds few (smooth images, drawings), those of a lower one."""
    enlarged = SIDE / max(pixels.shape)
    looked_at = _resized(pixels, max(1.0, enlarged), cv2.INTER_CUBIC)
    keypoints, descriptors = _ORB.detectAndCompute(looked_at, None)
    smooth = len(keypoints) < FEW_KEYPOINTS
    if smooth:
        keypoints, descriptors = _SMOOTH_ORB.detectAndCompute(looked_at, None)
    points = np.float32([k.pt for k in keypoints]).reshape(-1, 2) / max(1.0, enlarged)
    return Features(pixels, points, descriptors, smooth)


def mirrored(found: Features) -> Features:
    """The features of the image mirrored left to right."""
    return features(np.ascontiguousarray(found.pixels[:, ::-1]))


def fitted_transform(a: Features, b: Features) -> tuple[np.ndarray | None, int]:
    """The affine transform taking a's pixels to b's, by matched keypoints and RANSAC, and its
    inlier count; None where too few keypoints agree or the transform is no copy's."""
    if a.descriptors is None or b.descriptors is None or min(len(a.points), len(b.points)) < 2:
        return None, 0
    matches = _MATCHER.knnMatch(a.descriptors, b.descriptors, k=2)
    good = [m[0] for m in matches if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < MIN_INLIERS:
        return None, len(good)
    source = a.points[[m.queryIdx for m in good]]
    target = b.points[[m.trainIdx for m in good]]
    transform, inlier_mask = cv2.estimateAffine2D(source, target, method=cv2.RANSAC,
                                                  ransacReprojThreshold=RANSAC_PIXELS)
    inliers = int(inlier_mask.sum()) if inlier_mask is not None else 0
    if transform is None or inliers < MIN_INLIERS or not _plausible(transform):
        return None, inliers
    return transform, inliers


def _plausible(transform: np.ndarray) -> bool:
    stretch = np.linalg.svd(transform[:, :2], compute_uv=False)
    return bool(stretch[1] > 0 and 1 / MAX_SCALE <= stretch[1] <= stretch[0] <= MAX_SCALE
                and stretch[0] / stretch[1] <= MAX_SHEAR)


def pixel_agreement(a: np.ndarray, b: np.ndarray, transform: np.ndarray) -> float:
    """Laplacian correlation of grey images a and b where they overlap once a is moved onto b by
    `transform` (refined by ECC), compared in the frame of the image with fewer pixels per
    detail; NaN where they overlap too little."""
    if abs(np.linalg.det(transform[:, :2])) > 1:  # a's detail is coarser: compare in a's frame
        a, b, transform = b, a, cv2.invertAffineTransform(transform)
    moving, fixed = a.astype(np.float32), b.astype(np.float32)
    h, w = fixed.shape
    overlap = cv2.warpAffine(np.ones_like(moving), transform, (w, h), flags=cv2.INTER_NEAREST)
    overlap = cv2.erode(overlap, np.ones((5, 5), np.uint8)) > 0
    if overlap.sum() < MIN_OVERLAP:
        return float("nan")
    to_moving = cv2.invertAffineTransform(transform).astype(np.float32)
    rough = _moved_agreement(moving, fixed, to_moving, overlap)
    if not rough >= ROUGH_AGREEMENT:  # ECC costs ten times the rest: only where it can matter
        return rough
    try:
        _, to_moving = cv2.findTransformECC(
            fixed, moving, to_moving, cv2.MOTION_AFFINE,
            (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ECC_STEPS, 1e-4), None, 3)
    except cv2.error:  # ECC did not converge: judge by the keypoints' transform
        return rough
    return _moved_agreement(moving, fixed, to_moving, overlap)


def _moved_agreement(moving: np.ndarray, fixed: np.ndarray, to_moving: np.ndarray,
                     overlap: np.ndarray) -> float:
    h, w = fixed.shape
    moved = cv2.warpAffine(moving, to_moving, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    return _correlation(_detail(moved)[overlap], _detail(fixed)[overlap])


def _detail(pixels: np.ndarray) -> np.ndarray:
    return cv2.Laplacian(cv2.GaussianBlur(pixels, (0, 0), 1.0), cv2.CV_32F)


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    scale = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / scale) if scale > 0 else float("nan")


def check_pair(a: Features, b: Features, mirror_of_a: Callable[[], Features]) -> Check:
    """Whether b holds a region of a, or of a mirrored where a as it is shares no region with b:
    keypoints, then agreeing pixels."""
    smooth = a.smooth or b.smooth
    transform, inliers = fitted_transform(a, b)
    is_mirrored = transform is None
    if is_mirrored:
        a = mirror_of_a()
        transform, inliers = fitted_transform(a, b)
    if transform is None:
        return Check(inliers, float("nan"), is_mirrored, smooth)
    return Check(inliers, pixel_agreement(a.pixels, b.pixels, transform), is_mirrored, smooth,
                 coverage(a.pixels.shape, b.pixels.shape, transform))


def coverage(a_shape: tuple[int, int], b_shape: tuple[int, int], transform: np.ndarray) -> float:
    """The smaller of the share of b that a covers once moved by `transform`, and the share of
    a that lands inside b: near 1 for two whole frames, lower where one is a crop of the other."""
    h, w = b_shape
    landed = cv2.warpAffine(np.ones(a_shape, np.uint8), transform.astype(np.float32), (w, h),
                            flags=cv2.INTER_NEAREST)
    inside = float(landed.sum())
    a_area = a_shape[0] * a_shape[1] * abs(float(np.linalg.det(transform[:, :2])))
    return min(inside / (h * w), inside / a_area if a_area else 0.0)


def candidate_pairs(vectors: np.ndarray, labels: np.ndarray, checks_per_image: int) -> np.ndarray:
    """(m, 2) pairs of rows of `vectors` (unit retrieval vectors) to check: among each row's
    `CROP_NEIGHBOURS` nearest rows, the pairs that `labels` (a group per row, -1 for none) does
    not put together yet; each row's nearest such pair, then the most similar others, up to
    ``checks_per_image * n`` in all. The nearest of each row is there because the budget goes
    to the most similar pairs, which in a collection of many near-identical shots could leave
    a copy made far by its edit (turned into black corners, say) unchecked."""
    n = len(vectors)
    if n < 2 or checks_per_image < 1:
        return np.empty((0, 2), np.int64)
    cosine, rows = nearest_neighbours(vectors, min(CROP_NEIGHBOURS, n - 1))
    k = rows.shape[1]
    starts = np.repeat(np.arange(n), k)
    group_start, group_end = labels[starts], labels[rows.ravel()]
    apart = (starts != rows.ravel()) & ((group_start < 0) | (group_start != group_end))
    ends = np.sort(np.stack([starts, rows.ravel()], axis=1), axis=1)[apart]
    similarity = cosine.ravel()[apart]
    nearest = np.zeros(len(ends), bool)  # each row's first pair left (rows come in rank order)
    nearest[np.unique(starts[apart], return_index=True)[1]] = True
    order = np.lexsort((-similarity, ~nearest))  # each row's nearest first, then by similarity
    keys = ends[order, 0] * n + ends[order, 1]
    _, first = np.unique(keys, return_index=True)  # each pair once, where it first comes
    chosen = np.sort(first)[:max(checks_per_image * n, int(nearest.sum()))]
    return ends[order][chosen]


def pixel_checked_pairs(pairs: np.ndarray, by_contrast_alone: np.ndarray, vectors: np.ndarray,
                        positions: np.ndarray, checks_per_image: int,
                        check: Callable[[np.ndarray, Callable[[int, int], None]], list[Check]],
                        progress: Callable[[int, int], None] = lambda done, total: None
                        ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Near-duplicate `pairs` (item positions) once the pixels have had their say: those left
    once the ones only the contrast joined (`by_contrast_alone`) that are other shots are
    dropped, the partial copies among `candidate_pairs` of the retrieval `vectors` (of the
    items at `positions`), and figures. `check` gives the Check of each of an (m, 2) array of
    item pairs."""
    second_opinion = pairs[by_contrast_alone]
    other_shot = np.array([c.other_shot for c in check(second_opinion, lambda done, total: None)],
                          dtype=bool)
    pairs = np.delete(pairs, np.flatnonzero(by_contrast_alone)[other_shot], axis=0)
    n_items = int(max(pairs.max(initial=-1), positions.max(initial=-1))) + 1
    labels = group_labels(n_items, pairs)
    candidates = positions[candidate_pairs(vectors, labels[positions], checks_per_image)]
    checks = check(candidates, progress)
    copies = np.array([c.joins for c in checks], dtype=bool)
    return pairs, candidates[copies].reshape(-1, 2), {
        "contrast_pairs_checked": len(second_opinion), "other_shots_dropped": int(other_shot.sum()),
        "partial_copy_candidates": len(candidates), "partial_copies": int(copies.sum()),
        "partial_copies_mirrored": sum(c.mirrored for c, is_copy in zip(checks, copies, strict=True)
                                       if is_copy)}


class FeatureCache:
    """Features of images read on demand (`read` gives an image's RGB array, None when it can no
    longer be read), the most recent `CACHE_IMAGES` kept, safe to use from several threads."""

    def __init__(self, read: Callable[[int], np.ndarray | None]):
        self._read = read
        self._kept: OrderedDict[tuple[int, bool], Features | None] = OrderedDict()
        self._lock = Lock()

    def get(self, item: int, is_mirrored: bool = False) -> Features | None:
        key = (item, is_mirrored)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        if is_mirrored:
            plain = self.get(item)
            found = None if plain is None else mirrored(plain)
        else:
            rgb = self._read(item)
            found = None if rgb is None else features(grey_pixels(rgb))
        with self._lock:
            self._kept[key] = found
            while len(self._kept) > CACHE_IMAGES:
                self._kept.popitem(last=False)
        return found


def find_partial_copies(pairs: np.ndarray, read: Callable[[int], np.ndarray | None],
                        progress: Callable[[int, int], None] = lambda done, total: None,
                        threads: int = 2) -> tuple[np.ndarray, list[Check]]:
    """The pairs (rows of `pairs`, items `read` can decode) that are partial copies, and the check
    of every pair in order. Unreadable images make their pairs no copies."""
    cache = FeatureCache(read)

    def check(pair: Iterable[int]) -> Check:
        a, b = pair
        fa, fb = cache.get(a), cache.get(b)
        if fa is None or fb is None:
            return Check(0, float("nan"), False)
        return check_pair(fa, fb, lambda: cache.get(a, True))

    checks: list[Check] = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for done, found in enumerate(pool.map(check, pairs.tolist()), start=1):
            checks.append(found)
            if done % 500 == 0 or done == len(pairs):
                progress(done, len(pairs))
    copies = np.array([c.joins for c in checks], dtype=bool)
    return pairs[copies] if len(pairs) else pairs.reshape(0, 2), checks
