"""CTR backbones over field embeddings `(B, F, e)`.

Each splits into `interact(E) -> representation` and `head(representation) -> logit (B,)`,
so that Multi-Embedding mode can run one interaction module per embedding set, average their
outputs and share the head (Guo et al., ICML 2024). `num_sets=1` is the plain model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from moc_fast.nn.layers import MLP, CrossNetV2, MultiHeadSelfAttention, fm_vector, pairwise_inner


class Backbone(nn.Module):
    """`forward(E)`: E is `(B, F, e)`, or `(S, B, F, e)` for S embedding sets in ME mode."""

    def __init__(self, num_fields: int, embed_dim: int, num_sets: int = 1) -> None:
        super().__init__()
        if num_sets < 1:
            raise ValueError(f"num_sets must be >= 1, got {num_sets}")
        self.num_fields, self.embed_dim, self.num_sets = num_fields, embed_dim, num_sets
        self.interactions = nn.ModuleList(self.make_interaction() for _ in range(num_sets))

    def make_interaction(self) -> nn.Module:
        raise NotImplementedError

    def head(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, emb: Tensor) -> Tensor:
        sets = emb if emb.dim() == 4 else emb.unsqueeze(0)
        if sets.shape[0] != self.num_sets or tuple(sets.shape[2:]) != (
            self.num_fields,
            self.embed_dim,
        ):
            raise ValueError(
                f"{type(self).__name__} expects ({self.num_sets} sets of) (B, {self.num_fields}, "
                f"{self.embed_dim}) field embeddings, got {tuple(emb.shape)}"
            )
        h = sum(f(e) for f, e in zip(self.interactions, sets, strict=True)) / self.num_sets
        return self.head(h)


class _Flatten(nn.Module):
    def forward(self, e: Tensor) -> Tensor:
        return e.flatten(1)


class DNN(Backbone):
    """Flattened embeddings into an MLP."""

    def __init__(self, num_fields, embed_dim, num_sets=1, hidden=(400, 400), dropout=0.2):
        super().__init__(num_fields, embed_dim, num_sets)
        self.mlp = MLP(num_fields * embed_dim, hidden, dropout)

    def make_interaction(self):
        return _Flatten()

    def head(self, h):
        return self.mlp(h)


class _FMAndFlat(nn.Module):
    def forward(self, e: Tensor) -> Tensor:
        return torch.cat([fm_vector(e), e.flatten(1)], dim=-1)  # (B, e + F·e)


class DeepFM(Backbone):
    """FM second-order term + first-order linear term + deep MLP, summed (Guo et al., 2017).
    The interaction output is [FM vector, flattened embeddings]; the head sums the FM vector
    and adds the linear and deep parts of the flattened embeddings."""

    def __init__(self, num_fields, embed_dim, num_sets=1, hidden=(400, 400), dropout=0.2):
        super().__init__(num_fields, embed_dim, num_sets)
        self.linear = nn.Linear(num_fields * embed_dim, 1)
        self.mlp = MLP(num_fields * embed_dim, hidden, dropout)

    def make_interaction(self):
        return _FMAndFlat()

    def head(self, h):
        fm, flat = h[:, : self.embed_dim], h[:, self.embed_dim :]
        return fm.sum(-1) + self.linear(flat).squeeze(-1) + self.mlp(flat)


class DCNv2(Backbone):
    """Cross network v2 stacked with a deep MLP (Wang et al., 2021)."""

    def __init__(
        self, num_fields, embed_dim, num_sets=1, cross_layers=3, hidden=(400, 400), dropout=0.2
    ):
        self.cross_layers = cross_layers
        super().__init__(num_fields, embed_dim, num_sets)
        self.mlp = MLP(num_fields * embed_dim, hidden, dropout)

    def make_interaction(self):
        return nn.Sequential(
            _Flatten(), CrossNetV2(self.num_fields * self.embed_dim, self.cross_layers)
        )

    def head(self, h):
        return self.mlp(h)


class AutoIntPlus(Backbone):
    """Multi-head self-attention over fields (Song et al., 2019) plus a DNN on the raw
    embeddings ("+"); the attention output and the embeddings feed the head."""

    def __init__(
        self,
        num_fields,
        embed_dim,
        num_sets=1,
        attention_layers=2,
        heads=2,
        attention_dim=None,
        hidden=(400, 400),
        dropout=0.2,
    ):
        self.attention_layers, self.heads = attention_layers, heads
        self.attention_dim = attention_dim or embed_dim
        super().__init__(num_fields, embed_dim, num_sets)
        width = num_fields * (self.attention_dim + embed_dim)
        self.mlp = MLP(width, hidden, dropout)

    def make_interaction(self):
        return _AutoIntBlock(self.embed_dim, self.attention_dim, self.heads, self.attention_layers)

    def head(self, h):
        return self.mlp(h)


class _AutoIntBlock(nn.Module):
    def __init__(self, embed_dim, attention_dim, heads, layers):
        super().__init__()
        dims = [embed_dim] + [attention_dim] * layers
        self.layers = nn.ModuleList(
            MultiHeadSelfAttention(a, b, heads) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )

    def forward(self, e):
        x = e
        for layer in self.layers:
            x = layer(x)
        return torch.cat([x.flatten(1), e.flatten(1)], dim=-1)


class IPNN(Backbone):
    """Product-based network with inner products of all field pairs (Qu et al., 2016)."""

    def __init__(self, num_fields, embed_dim, num_sets=1, hidden=(400, 400), dropout=0.2):
        super().__init__(num_fields, embed_dim, num_sets)
        pairs = num_fields * (num_fields - 1) // 2
        self.mlp = MLP(num_fields * embed_dim + pairs, hidden, dropout)

    def make_interaction(self):
        return _InnerProducts()

    def head(self, h):
        return self.mlp(h)


class _InnerProducts(nn.Module):
    def forward(self, e):
        return torch.cat([e.flatten(1), pairwise_inner(e)], dim=-1)


BACKBONES: dict[str, type[Backbone]] = {
    "dnn": DNN,
    "deepfm": DeepFM,
    "dcnv2": DCNv2,
    "autoint+": AutoIntPlus,
    "ipnn": IPNN,
}


def make_backbone(
    name: str, num_fields: int, embed_dim: int, num_sets: int = 1, **kwargs
) -> Backbone:
    """A backbone by name: one of `BACKBONES` (case-insensitive)."""
    cls = BACKBONES.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown backbone {name!r}: expected one of {sorted(BACKBONES)}")
    return cls(num_fields, embed_dim, num_sets, **kwargs)
