"""Embeddings of ordinary categorical fields: one table with offsets, and ME's several sets."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def check_ids(
    x: Tensor, field_dims: list[int], name: str = "x", check_range: bool = True
) -> None:
    """Raise on a wrong shape, dtype or (with `check_range`) an id outside its field's
    vocabulary (precisely on CPU tensors in eager mode; as a device-side assert on CUDA and
    under torch.compile/export)."""
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{name} must be a torch integer tensor (B, F={len(field_dims)}), got "
            f"{type(x).__module__}.{type(x).__name__} (use torch.as_tensor)"
        )
    if x.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an int64 or int32 tensor, got {x.dtype}")
    if x.dim() != 2 or x.shape[1] != len(field_dims):
        raise ValueError(f"{name} must have shape (B, F={len(field_dims)}), got {tuple(x.shape)}")
    if not check_range:
        return
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
            f"expected 0 <= id < {field_dims[col]} (oov_buckets > 0 maps unseen ids to "
            "out-of-vocabulary rows instead)"
        )


class FieldEmbedding(nn.Module):
    """`forward(x (B, F)) -> (B, F, embed_dim)`: one table for all fields, ids offset per field.

    `oov_buckets = 0`: an id outside `[0, field_dims[f])` raises. `oov_buckets = k > 0`: each
    field gets k out-of-vocabulary rows (after all vocabulary rows) and an unseen id uses row
    `id mod k` of its field's, so a model scores new users and items (k = 1: one shared row;
    k > 1: the hashing trick). Unseen ids are never trained unless they occur in training.
    """

    def __init__(
        self,
        field_dims: list[int],
        embed_dim: int,
        check: bool = True,
        oov_buckets: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not field_dims or min(field_dims) < 1:
            raise ValueError(f"field_dims must be a non-empty list of sizes >= 1, got {field_dims}")
        if oov_buckets < 0:
            raise ValueError(f"oov_buckets must be >= 0, got {oov_buckets}")
        self.field_dims, self.embed_dim, self.check = list(field_dims), embed_dim, check
        self.oov_buckets = oov_buckets
        offsets = torch.tensor([0, *field_dims[:-1]], device=device).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        dims = torch.tensor(field_dims, device=device)
        self.register_buffer("dims", dims, persistent=False)
        vocab = sum(field_dims)
        oov_start = vocab + oov_buckets * torch.arange(len(field_dims), device=device)
        self.register_buffer("oov_start", oov_start, persistent=False)
        rows = vocab + oov_buckets * len(field_dims)
        self.table = nn.Embedding(rows, embed_dim, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every row ~ N(0, 0.01²), out-of-vocabulary rows included; the offset buffers are
        refilled too (after `device="meta"` construction and `to_empty` they hold garbage)."""
        nn.init.normal_(self.table.weight, std=0.01)
        if self.offsets.device.type != "meta":
            fd = self.field_dims
            self.offsets.copy_(torch.tensor([0, *fd[:-1]]).cumsum(0))
            self.dims.copy_(torch.tensor(fd))
            self.oov_start.copy_(sum(fd) + self.oov_buckets * torch.arange(len(fd)))

    def forward(self, x: Tensor) -> Tensor:
        """`x (*, F)` -> `(*, F, embed_dim)`: any leading shape, like `nn.Embedding`."""
        if isinstance(x, Tensor) and x.dim() not in (0, 2):
            flat = self(x.reshape(-1, x.shape[-1]))
            return flat.reshape(*x.shape, self.embed_dim)
        if self.check:
            check_ids(x, self.field_dims, check_range=not self.oov_buckets)
        ids = x.long()
        if not self.oov_buckets:
            return self.table(ids + self.offsets)
        unseen = (ids < 0) | (ids >= self.dims)
        oov = self.oov_start + ids.remainder(self.oov_buckets)
        return self.table(torch.where(unseen, oov, ids + self.offsets))


class MultiEmbedding(nn.Module):
    """Multi-Embedding (Guo et al., ICML 2024): `num_sets` independent embedding sets for the
    same ids. `forward(x) -> (num_sets, B, F, embed_dim)`."""

    def __init__(
        self,
        field_dims: list[int],
        embed_dim: int,
        num_sets: int,
        oov_buckets: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_sets < 1:
            raise ValueError(f"num_sets must be >= 1, got {num_sets}")
        self.sets = nn.ModuleList(
            FieldEmbedding(field_dims, embed_dim, True, oov_buckets, device, dtype)
            for _ in range(num_sets)
        )
        for s in self.sets[1:]:
            s.check = False  # the first set already checked the ids

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([s(x) for s in self.sets])
