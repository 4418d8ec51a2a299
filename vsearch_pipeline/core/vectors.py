"""Reading the vector column of an embeddings shard: light (NumPy and pyarrow only), so that
what only reads vectors need not import the models (and torch)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def table_vectors(table: pa.Table) -> np.ndarray:
    """The vector column of a shard as an (n, dim) float32 array, without a Python loop."""
    column = table.column("vector").combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)
