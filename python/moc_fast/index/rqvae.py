"""RQ-VAE indexer (TIGER): residual quantisation of one latent, plus a collision code."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from moc_fast import engine
from moc_fast.index.base import VQIndexer, mlp
from moc_fast.index.quantizer import VectorQuantizer


class RQVAEIndexer(VQIndexer):
    """TIGER's RQ-VAE: encoder `D -> hidden -> latent_dim`, L residual levels (level l
    quantises what levels < l left), the sum of the L codewords into the decoder. `encode`
    appends the collision code so that every item's IDs are unique. Always L2.
    """

    appends_collision_code = True

    def __init__(
        self,
        levels: int = 3,
        codebook_size: int = 256,
        latent_dim: int = 32,
        hidden: tuple[int, ...] = (512, 256, 128),
        beta: float = 0.25,
        ema: bool = False,
        restart_after: int = 50,
        dropout: float = 0.0,
        input_dim: int | None = None,
        seed: int = 0,
    ) -> None:
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.config = dict(
            levels=levels,
            codebook_size=codebook_size,
            latent_dim=latent_dim,
            hidden=list(hidden),
            beta=beta,
            ema=ema,
            restart_after=restart_after,
            dropout=dropout,
            seed=seed,
        )
        self.levels, self.codebook_size, self.latent_dim, self.dropout = (
            levels,
            codebook_size,
            latent_dim,
            dropout,
        )
        self._quantizer_args = dict(beta=beta, metric="l2", ema=ema, restart_after=restart_after)
        super().__init__(input_dim, hidden, seed)

    @property
    def num_codes(self) -> int:
        return self.levels

    def _build_modules(self, input_dim: int) -> None:
        self.encoder = mlp([input_dim, *self.hidden, self.latent_dim], self.dropout)
        self.decoder = mlp([self.latent_dim, *reversed(self.hidden), input_dim], self.dropout)
        self.quantizers = nn.ModuleList(
            VectorQuantizer(
                self.codebook_size, self.latent_dim, seed=self.seed + lv, **self._quantizer_args
            )
            for lv in range(self.levels)
        )
        self.config["input_dim"] = input_dim

    def quantize(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        z = self.encoder(x)
        residual, total = z, torch.zeros_like(z)
        codes, losses, ppls = [], [], []
        for q in self.quantizers:
            out = q(residual)
            word = out.quantized.detach()  # the codeword's value
            total = total + word
            residual = residual - word
            codes.append(out.codes)
            losses.append(out.loss)
            ppls.append(out.perplexity)
        zq = z + (total - z).detach()  # straight-through to the encoder
        return zq, torch.stack(codes, 1), torch.stack(losses).sum(), torch.stack(ppls).mean()

    def codebooks(self) -> Tensor:
        """`(L, K, d)` residual codebooks."""
        return torch.stack([q.codebook for q in self.quantizers]).detach()

    def _assign_engine(self, z: Tensor) -> np.ndarray:
        cbs = self.codebooks().float().cpu().contiguous().numpy()
        return engine.assign_residual(z.float().cpu().contiguous().numpy(), cbs)[0]

    def _assign_torch(self, z: Tensor) -> Tensor:
        residual, codes = z, []
        for q in self.quantizers:
            c = q.assign_torch(residual)
            residual = residual - q.codebook.detach()[c]
            codes.append(c)
        return torch.stack(codes, 1)
