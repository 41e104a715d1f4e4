"""CTR backbones over field embeddings `(B, F, e)`.

Each backbone is a per-set module — the feature interaction and the first hidden layer of the
deep network, with their own parameters — followed by a shared head (the remaining hidden
layers and the logit). With `num_sets = s > 1` (Multi-Embedding, Guo et al., ICML 2024, after
their code: thuml/Multi-Embedding `torchfm/model/*.py`) each of the s embedding sets goes
through its own per-set module, the s outputs are averaged, and the shared head follows; with
`num_sets = 1` it is exactly the plain model. So every backbone in ME mode has per-set
interaction parameters: DNN and IPNN their first layer (IPNN's product layer feeds it), DCNv2
its cross network, AutoInt+ its attention, DeepFM its FM/linear terms and first deep layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from moc_fast.nn.layers import MLP, CrossNetV2, MultiHeadSelfAttention, fm_vector, pairwise_inner


class Backbone(nn.Module):
    """`forward(E)`: E is `(B, F, e)`, or `(S, B, F, e)` for S embedding sets in ME mode."""

    def __init__(
        self,
        num_fields: int,
        embed_dim: int,
        num_sets: int = 1,
        hidden: tuple[int, ...] = (400, 400),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if num_sets < 1:
            raise ValueError(f"num_sets must be >= 1, got {num_sets}")
        if not hidden:
            raise ValueError("hidden must have at least one layer (its first is per set in ME)")
        self.num_fields, self.embed_dim, self.num_sets = num_fields, embed_dim, num_sets
        self.hidden, self.dropout = tuple(hidden), dropout
        self.interactions = nn.ModuleList(self.make_interaction() for _ in range(num_sets))
        self.mlp = MLP(self.hidden[0], self.hidden[1:], dropout)

    def interaction(self) -> tuple[nn.Module, int]:
        """The feature interaction of one set and its output width."""
        raise NotImplementedError

    def make_interaction(self) -> nn.Module:
        module, width = self.interaction()
        first = nn.Sequential(nn.Linear(width, self.hidden[0]), nn.ReLU(), nn.Dropout(self.dropout))
        return nn.Sequential(module, first)

    def head(self, h: Tensor) -> Tensor:
        return self.mlp(h)

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

    def interaction(self):
        return _Flatten(), self.num_fields * self.embed_dim


class _DeepFMSet(nn.Module):
    """One set of DeepFM: the first-order linear term plus the summed FM term (a scalar) and
    the first deep layer on the flattened embeddings: `(B, F, e) -> (B, 1 + hidden[0])`."""

    def __init__(self, num_fields: int, embed_dim: int, hidden0: int, dropout: float) -> None:
        super().__init__()
        self.linear = nn.Linear(num_fields * embed_dim, 1)
        self.first = nn.Sequential(
            nn.Linear(num_fields * embed_dim, hidden0), nn.ReLU(), nn.Dropout(dropout)
        )

    def forward(self, e: Tensor) -> Tensor:
        flat = e.flatten(1)
        wide = fm_vector(e).sum(-1, keepdim=True) + self.linear(flat)
        return torch.cat([wide, self.first(flat)], dim=-1)


class DeepFM(Backbone):
    """FM second-order term + first-order linear term + deep MLP, summed (Guo et al., 2017)."""

    def make_interaction(self):
        return _DeepFMSet(self.num_fields, self.embed_dim, self.hidden[0], self.dropout)

    def head(self, h):
        return h[:, 0] + self.mlp(h[:, 1:])


class DCNv2(Backbone):
    """Cross network v2 stacked with a deep MLP (Wang et al., 2021)."""

    def __init__(
        self, num_fields, embed_dim, num_sets=1, cross_layers=3, hidden=(400, 400), dropout=0.2
    ):
        self.cross_layers = cross_layers
        super().__init__(num_fields, embed_dim, num_sets, hidden, dropout)

    def interaction(self):
        width = self.num_fields * self.embed_dim
        return nn.Sequential(_Flatten(), CrossNetV2(width, self.cross_layers)), width


class AutoIntPlus(Backbone):
    """Multi-head self-attention over fields (Song et al., 2019) plus a DNN on the raw
    embeddings ("+"); the attention output and the embeddings feed the deep network."""

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
        super().__init__(num_fields, embed_dim, num_sets, hidden, dropout)

    def interaction(self):
        block = _AutoIntBlock(self.embed_dim, self.attention_dim, self.heads, self.attention_layers)
        return block, self.num_fields * (self.attention_dim + self.embed_dim)


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

    def interaction(self):
        pairs = self.num_fields * (self.num_fields - 1) // 2
        return _InnerProducts(), self.num_fields * self.embed_dim + pairs


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
