"""ItemCodes: item index -> semantic codes, held by the model, extendable with new items."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from moc_fast import engine


def code_dtype(largest: int) -> torch.dtype:
    """The smallest integer dtype that holds codes 0..largest (uint8 for K <= 256)."""
    for dtype in (torch.uint8, torch.int16, torch.int32):
        if largest <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def _wider(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    order = (torch.uint8, torch.int16, torch.int32, torch.int64)
    return max(a, b, key=order.index)


class ItemCodes(nn.Module):
    """A non-trainable `(N, M)` buffer of every item's codes, so that a model takes item ids
    and looks the codes up itself. `add_items` appends new items (cold start: items that
    arrive after training get codes from the indexer and are scored through them).

    The table is stored in the smallest integer dtype that holds every code (uint8 for
    K <= 256: 100M items x 3 codes take 300 MB instead of 2.4 GB as int64); lookups return
    int64. Under `fit_ctr`'s DDP the table is left out of the per-step buffer broadcast.
    `codebook_size` bounds every code (the model's code tables' rows) and fixes the dtype;
    codes outside it are refused when added, not when looked up.
    """

    def __init__(self, codes: Any | None = None, num_codes: int | None = None,
                 codebook_size: int | None = None) -> None:  # fmt: skip
        super().__init__()
        if codes is None:
            if num_codes is None:
                raise ValueError("give codes (N, M) or num_codes M for an empty ItemCodes")
            codes = np.zeros((0, num_codes), dtype=np.int64)
        table = self._as_codes(codes, num_codes, codebook_size)
        self.num_codes, self.codebook_size = table.shape[1], codebook_size
        self.register_buffer("table", table.to(self._dtype_for(table)))

    def _dtype_for(self, codes: Tensor) -> torch.dtype:
        if self.codebook_size:
            return code_dtype(self.codebook_size - 1)
        return code_dtype(int(codes.max()) if codes.numel() else 0)

    @staticmethod
    def _as_codes(codes: Any, num_codes: int | None, codebook_size: int | None) -> Tensor:
        t = torch.as_tensor(np.asarray(codes) if not isinstance(codes, Tensor) else codes)
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"codes must hold integers, got {t.dtype}")
        if t.dim() != 2 or (num_codes is not None and t.shape[1] != num_codes):
            want = f"(N, {num_codes})" if num_codes is not None else "(N, M)"
            raise ValueError(f"codes must have shape {want}, got {tuple(t.shape)}")
        t = t.to(torch.int64).cpu()
        if len(t) and (int(t.min()) < 0 or (codebook_size and int(t.max()) >= codebook_size)):
            bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
            raise ValueError(
                f"code {bad} is out of range: expected 0 <= code < codebook_size = "
                f"{codebook_size} (the model's code tables)"
            )
        return t

    @classmethod
    def from_indexer(cls, indexer: Any, embeddings: Any, codebook_size: int | None = None):
        """Codes of every item in `embeddings` (item i = row i) by a fitted indexer."""
        return cls(indexer.encode(embeddings), codebook_size=codebook_size)

    def __len__(self) -> int:
        return len(self.table)

    def add_items(
        self, codes: Any | None = None, *, indexer: Any = None, embeddings: Any = None
    ) -> Tensor:
        """Append new items; returns their item indices `(n,)`. Give their `codes`, or an
        `indexer` and their `embeddings`: where the indexer appends a collision code, it is
        computed against every item already held (one global pass), as one `encode` call over
        old and new items would."""
        if (codes is None) == (indexer is None):
            raise ValueError("give either codes, or indexer and embeddings")
        if indexer is not None:
            new = indexer.encode_raw(embeddings)
            if indexer.appends_collision_code:
                old = self.table[:, :-1].cpu().numpy().astype(np.int64)
                if old.shape[1] != new.shape[1]:
                    raise ValueError(f"the indexer gives {new.shape[1]} codes + a collision "
                                     f"code, these items have {self.num_codes}")  # fmt: skip
                new = engine.resolve_collisions(np.concatenate([old, new]))[len(old) :]
            codes = new
        t = self._as_codes(codes, self.num_codes, self.codebook_size).to(self.table.device)
        dtype = _wider(self.table.dtype, self._dtype_for(t))
        start = len(self.table)
        self.table = torch.cat([self.table.to(dtype), t.to(dtype)])
        return torch.arange(start, len(self.table))

    def forward(self, items: Tensor) -> Tensor:
        """`items (*)` item indices -> `(*, M)` codes."""
        if items.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"items must be an int64 or int32 tensor, got {items.dtype}")
        n = len(self.table)
        if items.is_cuda or torch.compiler.is_compiling():
            torch._assert_async(((items >= 0) & (items < n)).all(), "ItemCodes: unknown item")
        elif items.numel() and (int(items.min()) < 0 or int(items.max()) >= n):
            bad = int(items.min()) if int(items.min()) < 0 else int(items.max())
            raise ValueError(
                f"item {bad} has no codes: ItemCodes holds items 0..{n - 1} (add new items "
                "with add_items)"
            )
        return self.table[items.long()].long()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        saved = state_dict.get(prefix + "table")
        if saved is not None:  # items were added, or the file holds another dtype (int64)
            dtype = _wider(self.table.dtype, self._dtype_for(saved))
            if saved.shape != self.table.shape or dtype != self.table.dtype:
                self.table = torch.empty(saved.shape, dtype=dtype, device=self.table.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"items={len(self.table)}, M={self.num_codes}, K={self.codebook_size}"
