"""A product quantizer (faiss's k-means per sub-space) with codes as one byte per sub-space."""

from __future__ import annotations

import numpy as np

__all__ = ["ProductQuantizer"]


def _faiss():
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - faiss-cpu is in the dev / search extra
        raise ImportError("product quantization needs faiss: pip install -e '.[search]'") from err
    return faiss


class ProductQuantizer:
    """``M`` sub-spaces of ``D / M`` dims, ``2^8`` centroids each (Jegou et al.'s PQ, via faiss).

    Args:
        dim: vector length ``D``.
        m: sub-spaces (``D % m == 0``).
        seed: k-means seed.
    """

    nbits = 8

    def __init__(self, dim: int, m: int = 16, seed: int = 0):
        if m < 1 or dim % m:
            raise ValueError(f"dim={dim} must be a multiple of m={m}")
        faiss = _faiss()
        self.dim, self.m = int(dim), int(m)
        self._pq = faiss.ProductQuantizer(self.dim, self.m, self.nbits)
        self._pq.cp.seed = seed
        self.trained = False

    @property
    def ksub(self) -> int:
        return 1 << self.nbits

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"vectors must be [n, {self.dim}], got {x.shape}")
        return x

    def train(self, x: np.ndarray) -> ProductQuantizer:
        x = self._check(x)
        if x.shape[0] < self.ksub:
            raise ValueError(
                f"training PQ with {self.ksub} centroids needs >= {self.ksub} vectors, got {len(x)}"
            )
        self._pq.train(x)
        self.trained = True
        return self

    def _need_trained(self):
        if not self.trained:
            raise RuntimeError("train the ProductQuantizer first")

    @property
    def centroids(self) -> np.ndarray:
        """``[M, ksub, D / M]`` float32."""
        self._need_trained()
        faiss = _faiss()
        return faiss.vector_to_array(self._pq.centroids).reshape(self.m, self.ksub, self.dim // self.m)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """``[n, M]`` uint8 codes (nearest centroid per sub-space)."""
        self._need_trained()
        return self._pq.compute_codes(self._check(x))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """``[n, D]`` float32 reconstructions (the centroids the codes name)."""
        self._need_trained()
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        if codes.ndim != 2 or codes.shape[1] != self.m:
            raise ValueError(f"codes must be [n, {self.m}], got {codes.shape}")
        return self._pq.decode(codes)
