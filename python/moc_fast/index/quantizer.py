"""The vector-quantiser layer shared by every VQ indexer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moc_fast import engine
from moc_fast.checkpoint import rank_world

METRICS = ("l2", "cosine")


data_parallel = rank_world  # (rank, world size) of an initialised group, else (0, 1)


def gather_rows(local: Tensor) -> Tensor:
    """Every rank's rows in the global batch's order, on every rank: rank r holds global rows
    r, r + W, r + 2W, ... (how `VQIndexer.fit` shards a batch)."""
    import torch.distributed as dist

    _, world = data_parallel()
    if world == 1:
        return local
    size = torch.tensor([len(local)], device=local.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    padded = local.new_zeros((max(counts), *local.shape[1:]))
    padded[: len(local)] = local
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = local.new_empty((sum(counts), *local.shape[1:]))
    for r, (part, n) in enumerate(zip(parts, counts, strict=True)):
        out[r::world] = part[:n]
    return out


def all_reduce_sum(t: Tensor) -> Tensor:
    """`t` summed over ranks (in place); `t` itself outside torch.distributed."""
    import torch.distributed as dist

    if data_parallel()[1] > 1:
        dist.all_reduce(t)
    return t


@dataclass
class QuantizerOutput:
    """What one quantiser pass returns, explicitly rather than hidden in module state."""

    quantized: Tensor  # (..., d): codewords with straight-through gradients to the input
    codes: Tensor  # (...,) int64
    loss: Tensor  # codebook + beta * commitment (commitment only, with EMA updates)
    perplexity: Tensor  # exp(entropy) of this batch's code usage


def nearest_torch(z: Tensor, codebook: Tensor, metric: str) -> Tensor:
    """Nearest codeword by torch ops: argmin of ‖c‖² - 2 z·c (L2) or of -z·c (cosine, on
    normalised inputs). `argmin` returns the first minimum, so ties go to the lowest index,
    as in the Rust engine."""
    if metric == "cosine":
        return (z @ codebook.T).argmax(-1)
    return torch.addmm((codebook * codebook).sum(1), z, codebook.T, alpha=-2).argmin(-1)


class VectorQuantizer(nn.Module):
    """Nearest-codeword quantiser with a straight-through estimator.

    Loss: ‖sg[z] - q‖² (moves the codebook; replaced by EMA updates with `ema=True`) +
    beta·‖z - sg[q]‖² (commitment). The codebook is initialised by k-means on the first
    training batch (Rust engine), and codes unused for `restart_after` training steps are
    re-seeded from random latents of the current batch (dead-code restart). With
    `metric="cosine"` latents and codewords are compared and emitted L2-normalised.

    With `data_parallel = True` (set by `VQIndexer.fit` under torch.distributed) each rank holds
    a shard of the global batch: k-means runs on rank 0 over the gathered first batch and is
    broadcast, code counts and EMA sums are all-reduced, and restarts draw from the gathered
    batch with the same generator on every rank, so every rank keeps the same codebook as one
    process with the same global batch would.
    """

    def __init__(
        self,
        codebook_size: int = 256,
        dim: int = 32,
        beta: float = 0.25,
        metric: str = "l2",
        ema: bool = False,
        decay: float = 0.99,
        restart_after: int = 50,
        kmeans_init: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if codebook_size < 1 or dim < 1:
            raise ValueError(f"codebook_size and dim must be >= 1, got {codebook_size}, {dim}")
        self.codebook_size, self.dim, self.beta = codebook_size, dim, beta
        self.metric, self.ema, self.decay = metric, ema, decay
        self.restart_after, self.kmeans_init, self.seed = restart_after, kmeans_init, seed
        gen = torch.Generator().manual_seed(seed)
        init = torch.randn(codebook_size, dim, generator=gen) / dim**0.5
        self._restart_gen = torch.Generator().manual_seed(seed + 1)  # dead-code restarts
        self.codebook = nn.Parameter(init, requires_grad=not ema)
        self.data_parallel = False
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self.register_buffer("idle_steps", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("ema_count", torch.ones(codebook_size))
        self.register_buffer("ema_sum", init.clone())

    def normalized_codebook(self) -> Tensor:
        cb = self.codebook
        return F.normalize(cb, dim=-1) if self.metric == "cosine" else cb

    def _prepare(self, z: Tensor) -> Tensor:
        return F.normalize(z, dim=-1) if self.metric == "cosine" else z

    @torch.no_grad()
    def init_from(self, z: Tensor) -> None:
        """k-means (Rust) of a batch of latents as the starting codebook."""
        rank, world = data_parallel() if self.data_parallel else (0, 1)
        z = gather_rows(z.detach()) if world > 1 else z
        flat = self._prepare(z.detach()).reshape(-1, self.dim).float().cpu().numpy()
        if len(flat) < self.codebook_size:
            raise ValueError(
                f"k-means initialisation needs at least codebook_size = {self.codebook_size} "
                f"latents in the first batch, got {len(flat)}: raise batch_size or lower "
                "codebook_size"
            )
        metric = "ip" if self.metric == "cosine" else "l2"
        cb = torch.empty_like(self.codebook)
        if rank == 0:
            centroids, _, _ = engine.kmeans(
                flat, self.codebook_size, iters=20, seed=self.seed, metric=metric
            )
            cb = torch.from_numpy(centroids).to(self.codebook)
        if world > 1:
            import torch.distributed as dist

            dist.broadcast(cb, 0)
        self.codebook.data.copy_(cb)
        self.ema_sum.copy_(cb)
        self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantise `z (..., dim)`."""
        if self.training and not bool(self.initialized):
            self.init_from(z)
        zin = self._prepare(z)
        flat = zin.reshape(-1, self.dim)
        cb = self.normalized_codebook()
        codes = nearest_torch(flat.detach(), cb.detach(), self.metric)
        q = cb[codes]
        if self.training:
            self._update_stats(flat.detach(), codes)
        commit = F.mse_loss(flat, q.detach())
        loss = self.beta * commit if self.ema else F.mse_loss(q, flat.detach()) + self.beta * commit
        quantized = (flat + (q - flat).detach()).reshape(zin.shape)
        counts = torch.bincount(codes, minlength=self.codebook_size).float()
        if self.data_parallel:
            counts = all_reduce_sum(counts)
        p = counts / counts.sum().clamp_min(1)
        perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
        return QuantizerOutput(quantized, codes.reshape(zin.shape[:-1]), loss, perplexity)

    @torch.no_grad()
    def _update_stats(self, flat: Tensor, codes: Tensor) -> None:
        sync = all_reduce_sum if self.data_parallel else (lambda t: t)
        counts = sync(torch.bincount(codes, minlength=self.codebook_size))
        if self.ema:
            sums = sync(torch.zeros_like(self.ema_sum).index_add_(0, codes, flat))
            self.ema_count.mul_(self.decay).add_(counts.float(), alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.ema_count.sum()
            smoothed = (self.ema_count + 1e-5) / (n + self.codebook_size * 1e-5) * n
            self.codebook.data.copy_(self.ema_sum / smoothed[:, None])
        self.idle_steps.add_(1).masked_fill_(counts > 0, 0)
        if self.restart_after > 0:
            dead = torch.nonzero(self.idle_steps >= self.restart_after).flatten()
            if len(dead):
                if self.data_parallel:  # the global batch, identical on every rank
                    flat = gather_rows(flat)
                pick = torch.randint(0, len(flat), (len(dead),), generator=self._restart_gen)
                pick = pick.to(flat.device)
                self.codebook.data[dead] = flat[pick]
                self.ema_sum[dead] = flat[pick]
                self.ema_count[dead] = 1.0
                self.idle_steps[dead] = 0

    def assign_engine(self, z: Tensor) -> np.ndarray:
        """Codes of latents `z (N, dim)` through the Rust engine (CPU): the same codes as
        `forward`, since normalisation happens in torch in both paths."""
        zin = self._prepare(z.detach()).float().cpu().contiguous().numpy()
        cb = self.normalized_codebook().detach().float().cpu().contiguous().numpy()
        return engine.assign(zin, cb, "ip" if self.metric == "cosine" else "l2")[0]

    def assign_torch(self, z: Tensor) -> Tensor:
        """Codes of latents `z (N, dim)` by torch ops, on z's device."""
        return nearest_torch(
            self._prepare(z.detach()), self.normalized_codebook().detach(), self.metric
        )
