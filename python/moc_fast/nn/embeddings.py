"""Embeddings of ordinary categorical fields: one table with offsets, and ME's several sets."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def check_ids(x: Tensor, field_dims: list[int], name: str = "x") -> None:
    """Raise on a wrong shape, dtype or an id outside its field's vocabulary (precisely on CPU
    tensors in eager mode; as a device-side assert on CUDA and under torch.compile/export)."""
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{name} must be a torch integer tensor (B, F={len(field_dims)}), got "
            f"{type(x).__module__}.{type(x).__name__} (use torch.as_tensor)"
        )
    if x.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an int64 or int32 tensor, got {x.dtype}")
    if x.dim() != 2 or x.shape[1] != len(field_dims):
        raise ValueError(f"{name} must have shape (B, F={len(field_dims)}), got {tuple(x.shape)}")
    dims = torch.as_tensor(field_dims, device=x.device)
    bad = (x < 0) | (x >= dims)
    if x.is_cuda or torch.compiler.is_compiling():
        # A device-side assert: no wait for the GPU, no graph break under torch.compile.
        torch._assert_async(~bad.any(), f"{name}: an id is out of range for its field")
        return
    if bool(bad.any()):
        row, col = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"{name}[{row}, {col}] = {int(x[row, col])} is out of range for field {col}: "
            f"expected 0 <= id < {field_dims[col]}"
        )


class FieldEmbedding(nn.Module):
    """`forward(x (B, F)) -> (B, F, embed_dim)`: one table for all fields, ids offset per field."""

    def __init__(self, field_dims: list[int], embed_dim: int, check: bool = True) -> None:
        super().__init__()
        if not field_dims or min(field_dims) < 1:
            raise ValueError(f"field_dims must be a non-empty list of sizes >= 1, got {field_dims}")
        self.field_dims, self.embed_dim, self.check = list(field_dims), embed_dim, check
        offsets = torch.tensor([0, *field_dims[:-1]]).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.table = nn.Embedding(sum(field_dims), embed_dim)
        nn.init.normal_(self.table.weight, std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """`x (*, F)` -> `(*, F, embed_dim)`: any leading shape, like `nn.Embedding`."""
        if isinstance(x, Tensor) and x.dim() not in (0, 2):
            flat = self(x.reshape(-1, x.shape[-1]))
            return flat.reshape(*x.shape, self.embed_dim)
        if self.check:
            check_ids(x, self.field_dims)
        return self.table(x.long() + self.offsets)


class MultiEmbedding(nn.Module):
    """Multi-Embedding (Guo et al., ICML 2024): `num_sets` independent embedding sets for the
    same ids. `forward(x) -> (num_sets, B, F, embed_dim)`."""

    def __init__(self, field_dims: list[int], embed_dim: int, num_sets: int) -> None:
        super().__init__()
        if num_sets < 1:
            raise ValueError(f"num_sets must be >= 1, got {num_sets}")
        self.sets = nn.ModuleList(FieldEmbedding(field_dims, embed_dim) for _ in range(num_sets))
        for s in self.sets[1:]:
            s.check = False  # the first set already checked the ids

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([s(x) for s in self.sets])
