"""A projection head trained on the collection itself, self-supervised, over the frozen backbone.

SimCLR-style: each image is seen through random augmentations (crop, flip, mild colour jitter);
the frozen backbone turns every view into a unit vector once (`view_vectors`, the expensive part:
a forward pass per view), and a small MLP (Linear-BN-ReLU-Linear, 1280-1024-256) is trained on
those cached vectors with NT-Xent, two views of one image being the positive pair and the other
images of the batch the negatives (`train_projection_head`, seconds). At index and query time
`ProjectionHead.apply` (core/retrieval.py) maps the backbone's ordinary vectors, in plain NumPy.

Measured on Caltech-101 (8,677 images, efficientnet-lite0; fit on one part, retrieval by class
measured on another with exact cosine kNN; the whole table is in the commit that adds this):
- images split within every class: mAP@10 0.786 raw, 0.796 with the head; p@1 0.867 both;
- classes split (fit on 50, measured on the other 51): mAP@10 0.824 raw, 0.800 with the head;
  p@1 0.867 raw, 0.861: the head does not carry to content it was not fitted on;
- Faces / Faces_easy crop pairs (held out): partner ranked first 0.459 raw, 0.463 with the head,
  mean rank 19.4 raw, 8.7: crops of one photo move closer, as trained, but rarely to first place.
Off by default (`retrieval.projection_head`): it gains a little on the images it was fitted on and loses on
new content, and PCA to 256 dimensions fitted on the same part does as well (0.801, 0.820).
The variant kept is the best of those measured: the head's output alone (mAP@10 0.739 / 0.771),
the hidden layer (0.780 / 0.809) and a residual head (0.737 / 0.779) did worse than the output
beside the raw vector (`apply`); temperature 0.2 beat 0.1 and 0.5; the plain vector as one of the
views beat augmented views alone; 20 epochs or four augmented views instead of two changed
mAP@10 by under 0.004 at twice the cost. Training: 35 s for 10,000 images on one busy CPU core.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as TF

from vsearch_pipeline.core.models import EmbeddingModel, Prepared
from vsearch_pipeline.core.retrieval import ProjectionHead

CROP_SCALE = (0.3, 1.0)  # share of the image's area a random crop keeps
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = 0.3  # brightness, contrast and saturation each scaled by a factor in [1 - J, 1 + J]


# --------------------------------------------------------------------------- views


def augment(image: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """One random view: random resized crop to size x size, horizontal flip, mild colour jitter."""
    top, left, height, width = _crop_box(image.width, image.height, rng)
    view = TF.resized_crop(image, top, left, height, width, [size, size],
                           interpolation=transforms.InterpolationMode.BICUBIC)
    if rng.random() < 0.5:
        view = TF.hflip(view)
    brightness, contrast, saturation = rng.uniform(1 - JITTER, 1 + JITTER, size=3)
    view = TF.adjust_brightness(view, float(brightness))
    view = TF.adjust_contrast(view, float(contrast))
    return TF.adjust_saturation(view, float(saturation))


def _crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a crop of random area share and aspect ratio, as torchvision's
    RandomResizedCrop draws it, but from a NumPy generator (deterministic, no global state)."""
    area = width * height
    log_ratio = np.log(CROP_RATIO)
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = np.exp(rng.uniform(*log_ratio))
        w, h = round(np.sqrt(target * ratio)), round(np.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    side = min(width, height)  # fallback: the central square
    return (height - side) // 2, (width - side) // 2, side, side


def view_vectors(model: EmbeddingModel, images: Iterable[Image.Image], views: int, seed: int,
                 batch_size: int = 64) -> np.ndarray:
    """(n, views, dim) float32: the frozen backbone's unit vectors of `views` random augmentations
    of each image. Image i's views depend only on (seed, i), not on the batching. `images` may be
    a generator: each image is let go once its views are made."""
    def prepared() -> Iterator[Prepared]:
        for index, image in enumerate(images):
            rng = np.random.default_rng([seed, index])
            for _ in range(views):
                yield model.finish(augment(image, model.image_size, rng))

    chunks = [model.embed_prepared(batch, top=0)[0] for batch in _batches(prepared(), batch_size)]
    out = np.concatenate(chunks) if chunks else np.zeros((0, model.dim), np.float32)
    return out.astype(np.float32).reshape(-1, views, model.dim)


def _batches(items: Iterator[Prepared], size: int) -> Iterator[list[Prepared]]:
    batch: list[Prepared] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# --------------------------------------------------------------------------- the head


class _Mlp(torch.nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.first = torch.nn.Linear(in_dim, hidden)
        self.norm = torch.nn.BatchNorm1d(hidden)
        self.second = torch.nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.norm(self.first(x))))


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR's InfoNCE) for the pairs (a[i], b[i]); every other of the 2n vectors in the
    batch is a negative."""
    z = torch.nn.functional.normalize(torch.cat([a, b]), dim=1)
    n = len(a)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return torch.nn.functional.cross_entropy(logits, partner)


def train_projection_head(views: np.ndarray, out_dim: int = 256, epochs: int = 10,
                          batch_size: int = 256, temperature: float = 0.2, seed: int = 0,
                          plain: np.ndarray | None = None, hidden: int = 1024,
                          lr: float = 1e-3) -> tuple[ProjectionHead, dict]:
    """Train the head with NT-Xent on cached view vectors (n, views, dim): each step pairs two
    distinct random views of every image in the batch. `plain` (n, dim), the images' ordinary
    vectors (what the index holds, already computed), joins as one more view: measured better,
    since those are what the head is applied to. Deterministic for a seed. Returns the head and
    its history: the mean loss per epoch and the seconds taken."""
    if plain is not None:
        views = np.concatenate([plain[:, None], views], axis=1)
    n, n_views, dim = views.shape
    if n_views < 2 or n < 2:
        raise ValueError(f"need two views or more of two images or more, got {n_views} of {n}")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = _Mlp(dim, hidden, out_dim)
        data = torch.from_numpy(np.ascontiguousarray(views, dtype=np.float32))
        optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * _steps(n, batch_size))
        losses = [_epoch(net, data, rng, batch_size, temperature, optimizer, schedule)
                  for _ in range(epochs)]
    history = {"loss": losses, "seconds": round(time.perf_counter() - started, 2),
               "images": n, "views": n_views, "temperature": temperature, "epochs": epochs}
    return _to_numpy(net.eval()), history


def _steps(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


def _epoch(net: _Mlp, data: torch.Tensor, rng: np.random.Generator, batch_size: int,
           temperature: float, optimizer: torch.optim.Optimizer,
           schedule: torch.optim.lr_scheduler.LRScheduler) -> float:
    """One pass over the images in random order (a short last batch is dropped); the mean loss."""
    net.train()
    n, n_views, _ = data.shape
    order = rng.permutation(n)
    losses = []
    for step in range(_steps(n, batch_size)):
        rows = torch.from_numpy(order[step * batch_size:(step + 1) * batch_size])
        first = rng.integers(0, n_views, size=len(rows))
        second = (first + rng.integers(1, n_views, size=len(rows))) % n_views
        loss = nt_xent(net(data[rows, torch.from_numpy(first)]),
                       net(data[rows, torch.from_numpy(second)]), temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def _to_numpy(net: _Mlp) -> ProjectionHead:
    """Fold the batch norm's running statistics into the first linear layer."""
    with torch.no_grad():
        bn = net.norm
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w1 = net.first.weight.T * scale
        b1 = (net.first.bias - bn.running_mean) * scale + bn.bias
        weights = (w1, b1, net.second.weight.T, net.second.bias)
        return ProjectionHead(*(w.numpy().astype(np.float32) for w in weights))
