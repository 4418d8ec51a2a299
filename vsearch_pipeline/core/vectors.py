"""Reading the vector column of an embeddings shard: light (NumPy and pyarrow only), so that
what only reads vectors need not import the models (and torch)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def table_vectors(table: pa.Table) -> np.ndarray:
    """The vector column of a shard as an (n, dim) float32 array, without a Python loop."""
    column = table.column("vector").combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32,
                                                                                 copy=False)


class Int8Rows:
    """Vectors kept at one byte per dimension: each row scaled so that its largest component is
    127, its scale kept beside it. For unit vectors the cosine of a decoded row to the float row
    is above 0.9999 (256 or 1,280 dimensions), at a quarter of float32's bytes (half float16's)."""

    def __init__(self, codes: np.ndarray, scales: np.ndarray) -> None:
        self.codes = np.ascontiguousarray(codes, dtype=np.int8)  # (n, d)
        self.scales = np.ascontiguousarray(scales, dtype=np.float32)  # (n,): a row is codes * scale

    @classmethod
    def of(cls, vectors: np.ndarray) -> Int8Rows:
        vectors = np.asarray(vectors, dtype=np.float32)
        peak = np.abs(vectors).max(axis=1) if len(vectors) else np.zeros(0, np.float32)
        scales = np.where(peak > 0, peak / 127, 1).astype(np.float32)
        return cls(np.rint(vectors / scales[:, None]).astype(np.int8), scales)

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The decoded float32 rows at `positions`."""
        positions = np.asarray(positions, dtype=np.int64)
        return self.codes[positions].astype(np.float32) * self.scales[positions, None]

    def append(self, vectors: np.ndarray) -> Int8Rows:
        more = Int8Rows.of(vectors)
        return Int8Rows(np.concatenate([self.codes, more.codes]),
                        np.concatenate([self.scales, more.scales]))

    def to_bytes(self) -> bytes:
        import io

        buffer = io.BytesIO()
        np.savez(buffer, codes=self.codes, scales=self.scales)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Int8Rows:
        import io

        with np.load(io.BytesIO(data)) as arrays:
            return cls(arrays["codes"], arrays["scales"])
