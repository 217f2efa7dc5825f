"""Chunks of a tensor for chunked top-k, and the orthonormal DCT-II of a chunk.

SparseLoCo (Sarfi et al. 2025, arXiv 2508.15706) and DeMo (Peng et al. 2024, arXiv 2411.19870) select the
largest entries *per chunk*, so every region of a tensor sends the same number of values. The chunking is
theirs:

* a matrix of ``r x c`` (tensors with more dimensions are viewed as ``shape[0] x rest``) is cut into tiles of
  ``h x w``, ``h`` the largest divisor of ``r`` that is at most ``chunk_size`` and ``w`` likewise for ``c``
  (``chunk_size = 64``: 64 x 64 tiles of 4,096 values, the papers' setting);
* a 1-D tensor of ``n`` values is cut into runs of the largest divisor of ``n`` that is at most
  ``chunk_size``.

Every chunk of a tensor therefore has the same length and the layout depends on the shape alone, so a
receiver rebuilds it from the shape it already knows. :class:`ChunkLayout` maps a tensor to a
``(num_chunks, chunk_len)`` matrix (one chunk per row, a tile's values in row-major order) and back.

The DCT option (DeMo's): each chunk is moved to the DCT-II domain before top-k, with the orthonormal basis,
so the inverse is the transpose. A tile gets the 2-D transform ``C_h X C_w^T``, a run the 1-D ``C_n x``. The
bases are precomputed matrices (:func:`dct_basis`) applied with ``torch`` matmuls: no FFT, no scipy.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import torch

__all__ = ["ChunkLayout", "chunk_layout", "dct_basis", "largest_divisor_at_most"]

logger = logging.getLogger(__name__)


def largest_divisor_at_most(n: int, bound: int) -> int:
    """The largest divisor of ``n`` (>= 1) that is ``<= bound`` (1 when only 1 fits)."""
    if n < 1 or bound < 1:
        raise ValueError(f"n={n} and bound={bound} must be >= 1")
    best = 1
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            for candidate in (d, n // d):
                if best < candidate <= bound:
                    best = candidate
    return best


@functools.lru_cache(maxsize=64)
def _dct_basis_f64(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return basis


def dct_basis(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``C`` of size ``n``: ``C[k, i] = s_k cos(pi (2i + 1) k / 2n)``,
    ``s_0 = sqrt(1/n)``, ``s_k = sqrt(2/n)``; ``C @ C.T = I`` (float32, computed once per ``n`` in float64)."""
    return _dct_basis_f64(n).to(torch.float32)


@dataclass(frozen=True)
class ChunkLayout:
    """How one tensor shape is cut into equal chunks (module docstring)."""

    shape: tuple[int, ...]
    tile_rows: int
    """``h``: rows of a tile (1 for a 1-D tensor)."""
    tile_cols: int
    """``w``: columns of a tile (the run length for a 1-D tensor)."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def chunk_len(self) -> int:
        return self.tile_rows * self.tile_cols

    @property
    def num_chunks(self) -> int:
        return self.numel // self.chunk_len if self.numel else 0

    def _matrix_shape(self) -> tuple[int, int]:
        if len(self.shape) <= 1:
            return 1, self.numel
        return self.shape[0], self.numel // self.shape[0]

    def to_chunks(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(num_chunks, chunk_len)``: one chunk per row (a copy; float32)."""
        rows, cols = self._matrix_shape()
        h, w = self.tile_rows, self.tile_cols
        tiles = tensor.detach().to(torch.float32).reshape(rows // h, h, cols // w, w).permute(0, 2, 1, 3)
        return tiles.reshape(self.num_chunks, self.chunk_len).clone()

    def from_chunks(self, chunks: torch.Tensor) -> torch.Tensor:
        """The tensor (of :attr:`shape`) whose :meth:`to_chunks` is ``chunks``."""
        rows, cols = self._matrix_shape()
        h, w = self.tile_rows, self.tile_cols
        tiles = chunks.reshape(rows // h, cols // w, h, w).permute(0, 2, 1, 3)
        return tiles.reshape(self.shape).contiguous()

    def dct(self, chunks: torch.Tensor) -> torch.Tensor:
        """Each chunk in the orthonormal DCT-II domain (2-D for a tile, 1-D for a run)."""
        return self._transform(chunks, inverse=False)

    def idct(self, coefficients: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`dct` (the transposed bases)."""
        return self._transform(coefficients, inverse=True)

    def _transform(self, chunks: torch.Tensor, *, inverse: bool) -> torch.Tensor:
        h, w = self.tile_rows, self.tile_cols
        left = dct_basis(h).to(chunks.device)
        right = dct_basis(w).to(chunks.device)
        if inverse:
            left, right = left.T, right.T
        tiles = chunks.reshape(-1, h, w)
        # C_h X C_w^T per tile; for a run (h = 1) C_1 = [[1]] and this is C_w x.
        out = left @ tiles @ right.T
        return out.reshape(chunks.shape)


def chunk_layout(shape: tuple[int, ...] | torch.Size, chunk_size: int) -> ChunkLayout:
    """The layout of a tensor of ``shape`` with tiles (runs) of side at most ``chunk_size``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    shape = tuple(int(s) for s in shape)
    numel = math.prod(shape)
    if numel == 0:
        return ChunkLayout(shape, 1, 1)
    if len(shape) <= 1:
        return ChunkLayout(shape, 1, largest_divisor_at_most(numel, chunk_size))
    rows, cols = shape[0], numel // shape[0]
    return ChunkLayout(
        shape, largest_divisor_at_most(rows, chunk_size), largest_divisor_at_most(cols, chunk_size)
    )
