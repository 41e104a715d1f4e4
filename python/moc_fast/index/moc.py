"""MoC indexer: a multi-codebook VQ-VAE (M independent parallel codebooks, one decoder)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from moc_fast import engine
from moc_fast.index.base import VQIndexer, mlp
from moc_fast.index.quantizer import VectorQuantizer

LATENTS = ("per_codebook", "shared")


class MoCIndexer(VQIndexer):
    """Mixture-of-Codes indexing (arXiv 2410.09560, Stage 1).

    One encoder maps an embedding to latents; M codebooks quantise *in parallel* (not
    residually); the mean of the M quantised vectors goes to one shared decoder. With
    `latent="per_codebook"` the encoder emits M latents of `latent_dim` (one per codebook); with
    `latent="shared"` all codebooks quantise one latent. Each item gets M codes.

    Defaults chosen on real data (Beauty, M = 3, benches/index_quality.py): cosine codes beat L2
    (discriminability 0.909 vs 0.847, redundancy 0.600 vs 0.690); per-codebook latents beat a
    shared one slightly (0.847 vs 0.836).
    """

    def __init__(
        self,
        num_codebooks: int = 3,
        codebook_size: int = 256,
        latent_dim: int = 32,
        hidden: tuple[int, ...] = (512, 256, 128),
        latent: str = "per_codebook",
        beta: float = 0.25,
        metric: str = "cosine",
        ema: bool = False,
        restart_after: int = 50,
        dropout: float = 0.0,
        input_dim: int | None = None,
        seed: int = 0,
    ) -> None:
        if num_codebooks < 1:
            raise ValueError(f"num_codebooks must be >= 1, got {num_codebooks}")
        if latent not in LATENTS:
            raise ValueError(f"latent must be one of {LATENTS}, got {latent!r}")
        self.config = dict(
            num_codebooks=num_codebooks,
            codebook_size=codebook_size,
            latent_dim=latent_dim,
            hidden=list(hidden),
            latent=latent,
            beta=beta,
            metric=metric,
            ema=ema,
            restart_after=restart_after,
            dropout=dropout,
            seed=seed,
        )
        self.num_codebooks, self.codebook_size, self.latent_dim = (
            num_codebooks,
            codebook_size,
            latent_dim,
        )
        self.latent, self.dropout = latent, dropout
        self._quantizer_args = dict(beta=beta, metric=metric, ema=ema, restart_after=restart_after)
        # Quantisers exist before the encoder so that configs load without the input size.
        super().__init__(input_dim, hidden, seed)

    @property
    def num_codes(self) -> int:
        return self.num_codebooks

    def _build_modules(self, input_dim: int) -> None:
        m, d = self.num_codebooks, self.latent_dim
        out = m * d if self.latent == "per_codebook" else d
        self.encoder = mlp([input_dim, *self.hidden, out], self.dropout)
        self.decoder = mlp([d, *reversed(self.hidden), input_dim], self.dropout)
        self.quantizers = nn.ModuleList(
            VectorQuantizer(self.codebook_size, d, seed=self.seed + j, **self._quantizer_args)
            for j in range(m)
        )
        self.config["input_dim"] = input_dim

    def latents(self, x: Tensor) -> Tensor:
        """`(B, M, d)` per-codebook latents, or `(B, d)` when shared."""
        z = self.encoder(x)
        if self.latent == "per_codebook":
            return z.view(len(x), self.num_codebooks, self.latent_dim)
        return z

    def _latent_of(self, z: Tensor, j: int) -> Tensor:
        return z[:, j] if self.latent == "per_codebook" else z

    def quantize(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        z = self.latents(x)
        outs = [q(self._latent_of(z, j)) for j, q in enumerate(self.quantizers)]
        zq = torch.stack([o.quantized for o in outs], 1).mean(1)  # 'b m d -> b d'
        codes = torch.stack([o.codes for o in outs], 1)
        loss = torch.stack([o.loss for o in outs]).sum()
        ppl = torch.stack([o.perplexity for o in outs]).mean()
        return zq, codes, loss, ppl

    def codebooks(self) -> Tensor:
        """`(M, K, d)` codebooks as the codes are assigned (normalised for cosine)."""
        return torch.stack([q.normalized_codebook() for q in self.quantizers]).detach()

    def _assign_engine(self, z: Tensor) -> np.ndarray:
        q0 = self.quantizers[0]
        zin = q0._prepare(z).float().cpu().contiguous().numpy()
        cbs = self.codebooks().float().cpu().contiguous().numpy()
        return engine.assign_multi(zin, cbs, "ip" if q0.metric == "cosine" else "l2")

    def _assign_torch(self, z: Tensor) -> Tensor:
        return torch.stack(
            [q.assign_torch(self._latent_of(z, j)) for j, q in enumerate(self.quantizers)], 1
        )
