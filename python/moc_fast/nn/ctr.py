"""CTRModel: ordinary fields + semantic code fields + an optional dense text field -> backbone."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from moc_fast.fileio import atomic_write_bytes
from moc_fast.nn.backbones import make_backbone
from moc_fast.nn.embeddings import FieldEmbedding, MultiEmbedding
from moc_fast.nn.item_codes import ItemCodes
from moc_fast.nn.moc_embedding import MoCEmbedding

CTR_FORMAT_VERSION = 2  # 2: backbones split into per-set modules + shared head


class CTRModel(nn.Module):
    """A CTR model wired from one config.

    - `field_dims`: vocabulary size of each ordinary categorical field (user id, item id, ...);
    - `num_codebooks`, `codebook_size`, `fusion`: semantic code fields through `MoCEmbedding`
      (`fusion="none"` is plain per-codebook embeddings); `num_codebooks=0` for none;
    - `dense_dim`: a dense text-embedding field, projected by an MLP to one field;
    - `num_sets > 1`: Multi-Embedding mode (semantic codes then join the ordinary fields as
      categorical fields, each set with its own tables; needs `fusion="none"`);
    - `oov_buckets`: out-of-vocabulary rows per ordinary field (0: unseen ids raise; see
      `FieldEmbedding`), so new users and items can be scored;
    - `item_field`: which field of `x` is the item index; the model then holds an `ItemCodes`
      (`model.item_codes`, filled by `item_codes.add_items` or `from_indexer`) and looks codes
      up itself when `forward` gets none, e.g. for items added after training.
    """

    def __init__(
        self,
        field_dims: list[int],
        embed_dim: int = 16,
        backbone: str = "deepfm",
        num_codebooks: int = 0,
        codebook_size: int = 256,
        fusion: str = "gate",
        bottleneck: int | None = None,
        activation: str = "relu",
        dense_dim: int | None = None,
        dense_hidden: tuple[int, ...] = (128,),
        num_sets: int = 1,
        backend: str = "auto",
        backbone_kwargs: dict[str, Any] | None = None,
        oov_buckets: int = 0,
        item_field: int | None = None,
    ) -> None:
        args = dict(locals())
        super().__init__()
        self.config = {k: v for k, v in args.items() if k in _PARAMS}
        self.config["field_dims"] = list(field_dims)
        self.config["dense_hidden"] = list(dense_hidden)
        self.num_codebooks, self.num_sets = num_codebooks, num_sets
        if num_sets > 1 and num_codebooks and fusion != "none":
            raise ValueError(
                "Multi-Embedding (num_sets > 1) takes codes as plain fields: use fusion='none'"
            )
        cat_dims = list(field_dims)
        if num_sets > 1:
            cat_dims += [codebook_size] * num_codebooks
            self.fields = MultiEmbedding(cat_dims, embed_dim, num_sets, oov_buckets)
            self.codes = None
        else:
            self.fields = FieldEmbedding(cat_dims, embed_dim, oov_buckets=oov_buckets)
            self.codes = (
                MoCEmbedding(
                    num_codebooks, codebook_size, embed_dim, fusion, bottleneck, activation, backend
                )
                if num_codebooks
                else None
            )
        self.dense = None
        if dense_dim:
            sizes = [dense_dim, *dense_hidden, embed_dim]
            layers: list[nn.Module] = []
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
                layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
            self.dense = nn.Sequential(*layers)
        self.item_field, self.item_codes = item_field, None
        if item_field is not None:
            if not num_codebooks:
                raise ValueError("item_field needs semantic codes (num_codebooks > 0)")
            if not 0 <= item_field < len(field_dims):
                raise ValueError(
                    f"item_field must index one of the {len(field_dims)} fields, got {item_field}"
                )
            self.item_codes = ItemCodes(num_codes=num_codebooks, codebook_size=codebook_size)
        num_fields = len(field_dims) + num_codebooks + (1 if dense_dim else 0)
        self.backbone = make_backbone(
            backbone, num_fields, embed_dim, num_sets, **(backbone_kwargs or {})
        )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CTRModel:
        unknown = set(config) - _PARAMS
        if unknown:
            raise ValueError(
                f"unknown CTRModel config keys {sorted(unknown)}; known: {sorted(_PARAMS)}"
            )
        return cls(**config)

    def forward(
        self, x: Tensor, codes: Tensor | None = None, dense: Tensor | None = None
    ) -> Tensor:
        """Logits `(B,)` from ids `x (B, F)`, codes `(B, M)` and dense features `(B, D)`.
        Without `codes`, a model with `item_field` looks them up in `item_codes`."""
        if self.num_codebooks and codes is None:
            if self.item_codes is None:
                raise ValueError(f"this model needs codes (B, M={self.num_codebooks}), or an "
                                 "item_field to look them up by item")  # fmt: skip
            codes = self.item_codes(x[:, self.item_field])
        if self.dense is not None and dense is None:
            raise ValueError("this model needs its dense text-embedding field (B, dense_dim)")
        if self.num_sets > 1:
            ids = torch.cat([x, codes], 1) if self.num_codebooks else x
            emb = self.fields(ids)  # (S, B, F, e)
            if self.dense is not None:
                d = self.dense(dense).unsqueeze(1)
                emb = torch.cat([emb, d.unsqueeze(0).expand(self.num_sets, -1, -1, -1)], 2)
            return self.backbone(emb)
        parts = [self.fields(x)]
        if self.codes is not None:
            if codes.shape[0] != x.shape[0]:
                raise ValueError(f"codes has {codes.shape[0]} rows but x has {x.shape[0]}")
            parts.append(self.codes(codes))
        if self.dense is not None:
            parts.append(self.dense(dense).unsqueeze(1))
        return self.backbone(torch.cat(parts, 1))

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The embedding tables (ordinary fields, every ME set, the code tables)."""
        tables = [m.table.weight for m in self.fields.modules() if isinstance(m, FieldEmbedding)]
        return tables + ([self.codes.tables] if self.codes is not None else [])

    def save(self, path: str | Path) -> None:
        """safetensors weights + the config as JSON metadata, written atomically."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"format_version": CTR_FORMAT_VERSION, "config": self.config}
        atomic_write_bytes(path, st_save(tensors, metadata={"moc_fast_ctr": json.dumps(meta)}))

    @classmethod
    def load(cls, path: str | Path) -> CTRModel:
        data = Path(path).read_bytes()
        try:
            tensors = st_load(data)
            n = int.from_bytes(data[:8], "little")
            meta = json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["moc_fast_ctr"])
        except Exception as exc:
            raise ValueError(f"{path} is not a valid moc_fast CTR model file") from exc
        version = meta.get("format_version", 0)
        if version > CTR_FORMAT_VERSION:
            raise ValueError(f"{path} was written by a newer moc_fast (format {version})")
        if version < CTR_FORMAT_VERSION:
            raise ValueError(
                f"{path} is format {version}, from before the backbones were split into per-set "
                f"modules and a shared head (format {CTR_FORMAT_VERSION}): retrain the model"
            )
        model = cls.from_config(meta["config"])
        model.load_state_dict(tensors)
        return model


_PARAMS = set(inspect.signature(CTRModel.__init__).parameters) - {"self"}
