"""MoC on TorchRec: item ids in a `KeyedJaggedTensor` -> `ItemCodes` -> one TorchRec table per
codebook (an `EmbeddingBagCollection`, which `DistributedModelParallel` shards) -> the MoC
bottleneck fusion -> the CTR backbone.

TorchRec needs the torch release its fbgemm build was made for, so it lives in its own
environment (`bash scripts/setup_torchrec.sh`: torch 2.13, fbgemm-gpu-cpu 1.8.0, torchrec
1.8.0; README "TorchRec"). `TorchRecMoC.from_model` takes a trained `CTRModel` with an
`item_field` and gives the same logits on the same batch, whatever the sharding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from moc_fast.kernels.moc_embedding import moc_fuse
from moc_fast.nn.ctr import CTRModel

SETUP = "bash scripts/setup_torchrec.sh (torchrec 1.8.0 + fbgemm-gpu-cpu 1.8.0 + torch 2.13)"


def _torchrec() -> Any:
    try:
        import torchrec
    except (ImportError, OSError) as exc:  # OSError: an fbgemm built for another torch/CUDA
        msg = f"the TorchRec adapter needs torchrec and fbgemm: {SETUP} ({exc})"
        raise ImportError(msg) from exc
    return torchrec


class TorchRecMoC(nn.Module):
    """A `CTRModel`'s code tables as a TorchRec `EmbeddingBagCollection` (feature
    `{prefix}{j}` and table `{prefix}{j}` per codebook j, sum pooling of one code per item),
    with the model's ordinary fields, fusion weights, `ItemCodes` and backbone.

    `forward(x, features)`: `x (B, F)` the ordinary field ids as `CTRModel` takes them,
    `features` a `KeyedJaggedTensor` whose `item_feature` holds one item id per sample; the
    codes come from `ItemCodes`, never from `x`.
    """

    def __init__(
        self,
        model: CTRModel,
        item_feature: str = "item",
        prefix: str = "moc_code_",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        trec = _torchrec()
        if model.item_codes is None or model.codes is None or model.num_sets > 1:
            raise ValueError("TorchRecMoC needs a CTRModel with semantic codes, an item_field "
                             "(its ItemCodes) and one embedding set")  # fmt: skip
        codes = model.codes
        m, k, e = codes.num_codebooks, codes.codebook_size, codes.embed_dim
        self.item_feature, self.keys = item_feature, [f"{prefix}{j}" for j in range(m)]
        self.fusion, self.activation, self.num_codebooks = codes.fusion, codes.activation, m
        configs = [
            trec.EmbeddingBagConfig(name=key, embedding_dim=e, num_embeddings=k,
                                    feature_names=[key], pooling=trec.PoolingType.SUM)
            for key in self.keys
        ]  # fmt: skip
        dev = torch.device(device) if device is not None else codes.tables.device
        self.tables = trec.EmbeddingBagCollection(tables=configs, device=dev)
        with torch.no_grad():
            for key, weight in zip(self.keys, codes.tables, strict=True):
                self.tables.embedding_bags[key].weight.copy_(weight)
        self.w_down, self.b_down, self.w_up, self.b_up = (
            codes.w_down, codes.b_down, codes.w_up, codes.b_up)  # fmt: skip
        self.fields, self.dense, self.backbone = model.fields, model.dense, model.backbone
        self.item_codes = model.item_codes

    @classmethod
    def from_model(cls, model: CTRModel, **kwargs: Any) -> TorchRecMoC:
        return cls(model, **kwargs)

    def code_features(self, items: Tensor) -> Any:
        """The per-codebook `KeyedJaggedTensor` of items `(B,)`: one code per item and key."""
        trec = _torchrec()
        codes = self.item_codes(items)  # (B, M)
        return trec.KeyedJaggedTensor.from_lengths_sync(
            keys=self.keys,
            values=codes.t().reshape(-1),  # key-major, as KJT stores values
            lengths=torch.ones(codes.numel(), dtype=torch.int64, device=codes.device),
        )

    def forward(self, x: Tensor, features: Any, dense: Tensor | None = None) -> Tensor:
        jt = features[self.item_feature]
        lengths = jt.lengths()
        if lengths.numel() != x.shape[0] or bool((lengths != 1).any()):
            raise ValueError(f"features[{self.item_feature!r}] must hold exactly one item id "
                             f"per sample ({x.shape[0]})")  # fmt: skip
        pooled = self.tables(self.code_features(jt.values())).to_dict()
        # by name: a sharded collection returns its keys grouped by rank, not in table order
        emb = torch.stack([pooled[key] for key in self.keys], 1)  # (B, M, e)
        fused = moc_fuse(emb, self.w_down, self.b_down, self.w_up, self.b_up, self.fusion,
                         self.activation)  # fmt: skip
        parts = [self.fields(x), fused]
        if self.dense is not None:
            if dense is None:
                raise ValueError("this model needs its dense text-embedding field (B, dense_dim)")
            parts.append(self.dense(dense).unsqueeze(1))
        return self.backbone(torch.cat(parts, 1))
