"""Building blocks of the backbones."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MLP(nn.Module):
    """Linear-ReLU-Dropout blocks ending in one logit: `(B, d) -> (B,)`."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (400, 400), dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(in_dim, h), nn.ReLU(), nn.Dropout(dropout)]
            in_dim = h
        layers.append(nn.Linear(in_dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


def fm_vector(e: Tensor) -> Tensor:
    """FM's second-order interactions `0.5·((Σ_f e_f)² - Σ_f e_f²)`: `(B, F, e) -> (B, e)`."""
    return 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1))


def pairwise_inner(e: Tensor) -> Tensor:
    """Inner products of all field pairs i < j: `(B, F, e) -> (B, F(F-1)/2)`."""
    f = e.shape[1]
    i, j = torch.triu_indices(f, f, offset=1, device=e.device)
    return (e[:, i] * e[:, j]).sum(-1)


class CrossNetV2(nn.Module):
    """x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l (DCN-V2, full-rank)."""

    def __init__(self, dim: int, layers: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for lin in self.layers:
            x = x0 * lin(x) + x
        return x


class MultiHeadSelfAttention(nn.Module):
    """AutoInt's interacting layer: multi-head attention over fields with a residual projection
    and ReLU: `(B, F, d_in) -> (B, F, d_out)`."""

    def __init__(self, d_in: int, d_out: int, heads: int = 2):
        super().__init__()
        if d_out % heads:
            raise ValueError(f"attention_dim {d_out} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(d_in, 3 * d_out, bias=False)
        self.residual = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, f, _ = x.shape
        q, k, v = self.qkv(x).view(b, f, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        att = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # (B, H, F, d/H)
        out = att.transpose(1, 2).reshape(b, f, -1)
        return torch.relu(out + self.residual(x))
