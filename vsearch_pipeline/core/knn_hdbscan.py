"""HDBSCAN over an exact k-nearest-neighbour graph: the same hierarchy, built in BLAS time.

The hdbscan library finds core distances and the minimum spanning tree of mutual reachability
with KD-tree Boruvka, which degrades towards brute force in the 32 dimensions the pipeline
clusters in (measured: 20,000 vectors 24-34 s, and steeper beyond). Here the neighbours come from
one exact FAISS search (a matrix product) and the spanning tree is assembled in two parts:

- Inside dense groups, from the k-NN edges. An edge the k-NN graph lacks weighs at least the
  k-th neighbour distance of both its ends, so a k-NN edge lighter than that at both of its ends
  is kept: these edges join points into groups.
- Between groups, from Boruvka rounds: each group's lightest mutual-reachability link to any
  other group, found among its points' neighbours or, for a group whose neighbours all lie inside
  it, by an exact search of everything outside it. Without this the long links would be only
  those that happen to be k-NN edges, and a stray point near two clusters would join them.

hdbscan itself then condenses the tree and selects the clusters (excess of mass).
"""

from __future__ import annotations

import faiss
import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

# Neighbours per point: the spanning tree's choice. Against hdbscan's own labels on 20,000
# Caltech-derived vectors (32-d), 16 agreed at adjusted Rand 0.990 and 48 at 0.995; 48 cost 100,000
# vectors 32 s instead of 27 s.
NEIGHBOURS = 48


def knn(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k nearest neighbours of each vector (itself left out): distances, indices."""
    index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(vectors)
    squared, neighbours = index.search(vectors, k + 1)
    return np.sqrt(np.maximum(squared[:, 1:], 0)), neighbours[:, 1:]


def outside_link(vectors: np.ndarray, core: np.ndarray, inside: np.ndarray, k: int = 8
                 ) -> tuple[int, int, float]:
    """The lightest mutual-reachability link from the points `inside` (a mask) to the rest, among
    each inside point's k nearest outside ones."""
    members, others = np.flatnonzero(inside), np.flatnonzero(~inside)
    index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(vectors[others])
    squared, nearest = index.search(vectors[members], min(k, len(others)))
    far = others[nearest]
    weight = np.maximum(np.maximum(core[members, None], core[far]), np.sqrt(np.maximum(squared, 0)))
    a, b = np.unravel_index(np.argmin(weight), weight.shape)
    return int(members[a]), int(far[a, b]), float(weight[a, b])


def boruvka_links(vectors: np.ndarray, core: np.ndarray, distances: np.ndarray, indices: np.ndarray,
                  rows: np.ndarray, cols: np.ndarray) -> list[tuple[int, int, float]]:
    """Links that join the groups (the components of the edges rows-cols) into one tree, each
    round adding every group's lightest link to another group."""
    n, links = len(vectors), []
    weight = np.maximum(np.maximum(core[:, None], core[indices]), distances)
    while True:
        a = np.concatenate([rows, [link[0] for link in links]]).astype(np.int64)
        b = np.concatenate([cols, [link[1] for link in links]]).astype(np.int64)
        count, group = csgraph.connected_components(
            sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
        if count == 1:
            return links
        outward = np.where(group[indices] != group[:, None], weight, np.inf)
        best_j = np.argmin(outward, axis=1)
        best_w = outward[np.arange(n), best_j]
        order = np.argsort(group, kind="stable")
        starts = np.searchsorted(group[order], np.arange(count + 1))
        for g in range(count):
            members = order[starts[g]:starts[g + 1]]
            p = members[np.argmin(best_w[members])]
            if np.isfinite(best_w[p]):
                links.append((int(p), int(indices[p, best_j[p]]), float(best_w[p])))
            else:
                links.append(outside_link(vectors, core, group == g))


def mutual_reachability_tree(vectors: np.ndarray, min_samples: int,
                             neighbours: int = NEIGHBOURS) -> np.ndarray:
    """The spanning tree's edges (a, b, weight), lightest first."""
    n = len(vectors)
    k = min(max(neighbours, min_samples), n - 1)
    distances, indices = knn(vectors, k)
    core, reach = distances[:, min(min_samples, k) - 1], distances[:, -1]
    rows, cols = np.repeat(np.arange(n), k), indices.ravel()
    weight = np.maximum(np.maximum(core[rows], core[cols]), distances.ravel())
    safe = weight < np.minimum(reach[rows], reach[cols])
    links = boruvka_links(vectors, core, distances, indices, rows[safe], cols[safe])
    if links:
        a, b, w = (np.array(v) for v in zip(*links, strict=True))
        rows, cols = np.concatenate([rows, a]), np.concatenate([cols, b])
        weight = np.concatenate([weight, w])
    # csgraph reads a stored zero as "no edge": duplicates get the smallest positive weight.
    weight = np.maximum(weight, np.finfo(np.float64).tiny)
    tree = csgraph.minimum_spanning_tree(sparse.coo_matrix((weight, (rows, cols)), shape=(n, n)))
    tree = tree.tocoo()
    edges = np.column_stack([tree.row, tree.col, tree.data]).astype(np.float64)
    return edges[np.argsort(edges[:, 2], kind="stable")]


def single_linkage(vectors: np.ndarray, min_samples: int) -> np.ndarray:
    """HDBSCAN's single-linkage tree of mutual reachability: what every min_cluster_size's
    labels are condensed from (`tree_labels`), so trying several costs one tree."""
    from hdbscan.hdbscan_ import label

    return label(mutual_reachability_tree(np.ascontiguousarray(vectors, dtype=np.float32),
                                          min(min_samples, len(vectors) - 1)))


def tree_labels(vectors: np.ndarray, linkage: np.ndarray, min_cluster_size: int) -> np.ndarray:
    """HDBSCAN labels (-1: noise) from a `single_linkage` tree, excess-of-mass selection."""
    from hdbscan.hdbscan_ import _tree_to_labels

    return _tree_to_labels(vectors, linkage, min_cluster_size)[0].astype(np.int64)


def knn_hdbscan_labels(vectors: np.ndarray, min_cluster_size: int,
                       min_samples: int | None = None) -> np.ndarray:
    """HDBSCAN labels (-1: noise), excess-of-mass selection, as hdbscan.HDBSCAN gives them."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return tree_labels(vectors, single_linkage(vectors, min_samples or min_cluster_size),
                       min_cluster_size)
