"""What every indexer shares: input checks, the VQ-VAE training loop, encode batching."""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from moc_fast import engine
from moc_fast.checkpoint import load as load_checkpoint
from moc_fast.checkpoint import save as save_checkpoint
from moc_fast.index.quantizer import VectorQuantizer, data_parallel
from moc_fast.index.sources import EmbeddingSource, as_source
from moc_fast.progress import Progress

log = logging.getLogger(__name__)

ENCODE_CHUNK = 16_384  # rows per encode block: its encoder activations stay ~50 MB
SHUFFLE_BYTES = 256 << 20  # the shuffle buffer of streamed (parquet, iterable) training data


def shuffled_batches(
    source: EmbeddingSource, batch_size: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """One pass over `source` in batches shuffled within a buffer of about `SHUFFLE_BYTES`
    (at least two batches): seeded, so a rerun sees the same batches."""
    pool: list[np.ndarray] = []
    held = 0
    for block in source.blocks():
        pool.append(block)
        held += len(block)
        if held * block.shape[1] * 4 >= SHUFFLE_BYTES and held >= 2 * batch_size:
            rows = np.concatenate(pool)
            rows = rows[rng.permutation(len(rows))]
            full = len(rows) // batch_size * batch_size
            for s in range(0, full, batch_size):
                yield rows[s : s + batch_size]
            pool, held = [rows[full:]], len(rows) - full
    if held:
        rows = np.concatenate(pool)
        rows = rows[rng.permutation(len(rows))]
        for s in range(0, len(rows), batch_size):
            yield rows[s : s + batch_size]


def _global_batch(xb: np.ndarray | None, world: int, dev: torch.device) -> tuple[int, int]:
    """(rows in this step's global batch, D) from every rank's share (`None`: none left).
    Under torch.distributed every rank calls it once per step, even with nothing left."""
    rows, d = (0, 0) if xb is None else xb.shape
    if world == 1:
        return rows, d
    import torch.distributed as dist

    t = torch.tensor([rows, d * (rows > 0), rows > 0], dtype=torch.int64, device=dev)
    dist.all_reduce(t)  # on dev: nccl reduces CUDA tensors only
    total, d_sum, holders = t.tolist()
    return total, d_sum // max(1, holders)


def embedding_blocks(X: Any, input_dim: int, rows: int = ENCODE_CHUNK) -> Iterator[np.ndarray]:
    """The checked blocks of any embedding source, each with the D an indexer was built for."""
    for block in as_source(X).blocks(rows):
        if block.shape[1] != input_dim:
            raise ValueError(
                f"X has {block.shape[1]} columns but this indexer was built for D = {input_dim}"
            )
        yield block


def encode_blocks(
    X: Any, input_dim: int, num_codes: int, codes_of: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """`codes_of` over the blocks of `X`, as one int64 `(N, num_codes)` array. Where N is
    known beforehand the blocks are written into the result as they come, so the whole
    output is allocated once and never held twice (blocks plus their concatenation)."""
    source = as_source(X)
    n = source.num_rows
    out = np.empty((n, num_codes), dtype=np.int64) if n is not None else None
    parts, at = [], 0
    for block in embedding_blocks(source, input_dim):
        codes = codes_of(block)
        if out is not None:
            out[at : at + len(codes)] = codes
        else:
            parts.append(codes)
        at += len(codes)
    if out is not None:
        return out[:at]
    return np.concatenate(parts) if parts else np.zeros((0, num_codes), dtype=np.int64)


def as_embeddings(X: Any, input_dim: int | None = None, name: str = "X") -> np.ndarray:
    """`X` as a finite float32 (N, D) array; `input_dim` is what a fitted indexer expects."""
    arr = X.detach().cpu().numpy() if isinstance(X, Tensor) else np.asarray(X)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of item embeddings (N, D), got shape {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{name} must hold floats, got {arr.dtype}")
    if input_dim is not None and arr.shape[1] != input_dim:
        raise ValueError(
            f"{name} has {arr.shape[1]} columns but this indexer was built for D = {input_dim}"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(f"{name} must be finite: row {int(np.argmax(bad))} holds NaN or inf")
    return arr


def mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Indexer:
    """The interface of every indexer: fit, encode, reconstruct, save.

    `encode` returns int64 codes `(N, num_codes)` (plus one collision column where the indexer
    appends it); `encode_raw` never appends it.
    """

    config: dict[str, Any]
    summary: dict[str, Any]
    codebook_size: int
    appends_collision_code: bool = False

    @property
    def num_codes(self) -> int:  # codes per item before any collision suffix
        raise NotImplementedError

    @property
    def fitted(self) -> bool:
        raise NotImplementedError

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(X) before encoding")

    def encode_raw(self, X: Any) -> np.ndarray:
        raise NotImplementedError

    def encode(self, X: Any) -> np.ndarray:
        """Semantic IDs of the items in `X (N, D)`: int64 `(N, num_codes[+1])`, deterministic.

        Where a collision code is appended, it ranks each item among the items *of this call*
        that share its tuple, so encode the whole catalogue at once.
        """
        codes = self.encode_raw(X)
        return engine.resolve_collisions(codes) if self.appends_collision_code else codes

    def reconstruct(self, X: Any) -> np.ndarray:
        raise NotImplementedError

    def save(self, path: str) -> None:
        from moc_fast.index.io import save_indexer

        save_indexer(self, path)


class VQIndexer(nn.Module, Indexer):
    """A VQ-VAE indexer: encoder MLP, quantisers, decoder MLP, trained end to end."""

    def __init__(self, input_dim: int | None, hidden: tuple[int, ...], seed: int) -> None:
        nn.Module.__init__(self)
        self.input_dim = input_dim
        self.hidden = tuple(int(h) for h in hidden)
        self.seed = seed
        self.summary = {}
        self._built = False
        if input_dim is not None:
            self.build(input_dim)

    def build(self, input_dim: int) -> None:
        """Create the layers, initialised from `seed`; the global RNG is left as it was."""
        self.input_dim = int(input_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self._build_modules(self.input_dim)
        self._built = True

    def _build_modules(self, input_dim: int) -> None:
        raise NotImplementedError

    def quantize(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`x -> (decoder input, codes (B, num_codes), quantiser loss, mean perplexity)`."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`x -> (reconstruction, codes, quantiser loss, perplexity)`."""
        zq, codes, qloss, ppl = self.quantize(x)
        return self.decoder(zq), codes, qloss, ppl

    @property
    def fitted(self) -> bool:
        return self._built and bool(self.summary)

    def fit(
        self,
        X: Any,
        epochs: int = 50,
        batch_size: int = 1024,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        device: str | torch.device | None = None,
        progress: bool = True,
        desc: str | None = None,
        checkpoint: str | os.PathLike | None = None,
    ) -> VQIndexer:
        """Train on item embeddings `X (N, D)`: reconstruction MSE + quantiser losses, Adam.
        `desc` labels the progress (one step per epoch).

        `X` is an array, a memory-mapped `.npy`, a parquet path or an iterable of batches
        (`moc_fast.index.sources`). Arrays and memory maps are shuffled exactly alike (a seeded
        permutation, rows gathered per batch), so a memory map trains the same model as the
        array in RAM; parquet and iterables stream through a seeded shuffle buffer
        (`SHUFFLE_BYTES`). Memory is bounded by the batch and that buffer, not by N.
        Under torch.distributed each rank reads only its rows of an array or memory map, and
        only its own part of a parquet dataset (contiguous row groups, about 1/W of the bytes);
        see `_epoch_batches`.

        `checkpoint`: a file written (atomically, by rank 0) after every epoch with the model,
        the optimizer and every generator the training draws from; when it exists at the
        start, training resumes after its epoch and ends with the same model as the
        uninterrupted run. Under torch.distributed every rank must see it (else a ValueError
        on all of them).
        """
        if epochs < 1 or batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
        dev = resolve_device(device)
        rank, world = data_parallel()
        gen = torch.Generator().manual_seed(self.seed)  # the epochs' permutations
        rng = np.random.default_rng(self.seed)  # the streamed sources' shuffle buffer
        ckpt = Path(checkpoint) if checkpoint is not None else None
        state = load_checkpoint(ckpt)
        first, start_epoch, n = None, 0, 0
        if state is not None:
            if self._built and self.input_dim != state["input_dim"]:
                raise ValueError(f"checkpoint {ckpt} is for D = {state['input_dim']}, this "
                                 f"indexer was built for D = {self.input_dim}")  # fmt: skip
            if not self._built:
                self.build(state["input_dim"])
            start_epoch, n = state["epoch"], state["items"]
        epoch_batches = self._epoch_batches(X, batch_size, dev, rank, world, gen, rng)
        if state is None:
            batches = epoch_batches()
            first = next(batches, None)
            if first is None:
                raise ValueError("X holds no items: nothing to train on")
            if not self._built:
                self.build(first[0].shape[1])
        self.to(dev).train()
        opt = torch.optim.Adam(self.parameters(), lr=lr, weight_decay=weight_decay)
        quantizers = [m for m in self.modules() if isinstance(m, VectorQuantizer)]
        recon_loss = qloss = ppl = torch.zeros(())
        if state is not None:
            self.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
            rng.bit_generator.state = json.loads(state["numpy_rng"])
            for q, g in zip(quantizers, state["restart_generators"], strict=True):
                q._restart_gen.set_state(g)
            recon_loss, qloss, ppl = (torch.tensor(v) for v in state["last"])
            log.info("resuming %s after epoch %d", ckpt, start_epoch)
            del state
        for q in quantizers:
            q.data_parallel = world > 1
        bar = Progress(epochs, desc or f"{type(self).__name__} epochs", progress and rank == 0)
        if start_epoch:
            bar.update(start_epoch)
        start = time.perf_counter()
        for epoch in range(start_epoch, epochs):
            todo = epoch_batches() if first is None else itertools.chain([first], batches)
            first = None
            for xb, rows in todo:
                n += rows if epoch == 0 else 0
                recon_loss, qloss, ppl = self._step(opt, xb, rows, world)
            bar.update(1, recon=f"{recon_loss.item():.4g}", ppl=f"{ppl.item():.1f}")
            if ckpt is not None and rank == 0:
                save_checkpoint(ckpt, {
                    "version": 1, "world": world, "epoch": epoch + 1, "items": n,
                    "input_dim": self.input_dim, "model": self.state_dict(),
                    "optimizer": opt.state_dict(), "generator": gen.get_state(),
                    "numpy_rng": json.dumps(rng.bit_generator.state),
                    "restart_generators": [q._restart_gen.get_state() for q in quantizers],
                    "last": [float(recon_loss), float(qloss), float(ppl)],
                })  # fmt: skip
        bar.close()
        for q in quantizers:
            q.data_parallel = False
        self.eval()
        self.summary = {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "items": n,
            "device": str(dev),
            "seconds": round(time.perf_counter() - start, 3),
            "final_recon_mse": float(recon_loss.item()) / self.input_dim,
            "final_quantizer_loss": float(qloss.item()),
            "final_batch_perplexity": float(ppl.item()),
        }
        log.info("%s fitted: %s", type(self).__name__, self.summary)
        return self

    def _step(
        self, opt: torch.optim.Optimizer, xb: Tensor, rows: int, world: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One optimiser step on this rank's share `xb` of a global batch of `rows` rows.

        Under torch.distributed every rank runs the same collectives in the same order, even
        with an empty share (a last batch of fewer rows than ranks), and every rank learns
        whether any rank's loss is non-finite before it raises: one rank raising alone would
        leave the others waiting in an all-reduce.
        """
        recon, _, qloss, ppl = self(xb)  # with an empty share: only the quantisers' collectives
        opt.zero_grad(set_to_none=True)
        finite = True
        recon_loss = torch.zeros((), device=xb.device)
        if len(xb):
            # Squared error per item (summed over D): with a mean over D, unit-norm text
            # embeddings give a loss ~1/D that the quantiser losses drown out.
            recon_loss = ((recon - xb) ** 2).sum(-1).mean()
            loss = recon_loss + qloss
            finite = bool(torch.isfinite(loss))
            if finite:  # weighted so that the averaged gradient is the global batch's
                (loss * (len(xb) * world / rows)).backward()
        if world > 1:
            finite = self._average_gradients(world, finite)
        if not finite:
            raise FloatingPointError("indexer training diverged: the loss became NaN/inf")
        opt.step()
        return recon_loss.detach(), qloss.detach(), ppl.detach()

    def _average_gradients(self, world: int, finite: bool) -> bool:
        """All-reduce every gradient (one flat buffer, zeros for a rank without one) and divide
        by the world size. The buffer carries this rank's "loss was non-finite" flag too, so
        the sum tells every rank whether any failed; returns whether none did."""
        import torch.distributed as dist

        params = [p for p in self.parameters() if p.requires_grad]  # the same on every rank
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        flag = torch.tensor([0.0 if finite else 1.0], device=grads[0].device)
        flat = torch.cat([*(g.reshape(-1) for g in grads), flag])
        dist.all_reduce(flat)
        if not bool(torch.isfinite(flat).all()) or flat[-1].item() > 0:
            return False
        flat /= world
        for p, g in zip(params, flat[:-1].split([q.numel() for q in params]), strict=True):
            p.grad = g.view_as(p).clone()
        return True

    def _epoch_batches(
        self,
        X: Any,
        batch_size: int,
        dev: torch.device,
        rank: int,
        world: int,
        gen: torch.Generator,
        rng: np.random.Generator,
    ) -> Callable[[], Iterator[tuple[Tensor, int]]]:
        """A function giving one epoch's shuffled batches as `(this rank's share on dev, rows
        in the global batch)`.

        Random-access sources (arrays, memory maps): every rank draws the same permutation
        and reads only rows r, r + world, ... of each global batch, so W ranks train the model
        one process trains. Streamed sources (parquet, iterables): each rank reads its own
        part (`EmbeddingSource.shard`) through its own shuffle buffer, in batches of about
        batch_size / W; before each step the ranks add up their batch sizes (one small
        all-reduce), which gives the global batch for the loss weights and ends the epoch on
        every rank at once when all parts are spent, however unequal they are."""
        source = as_source(X)
        dim = self.input_dim if self._built else None
        mem = source.in_memory()
        if mem is not None and world == 1:  # already in RAM, one process: keep it on the device
            data = torch.from_numpy(as_embeddings(mem, dim)).to(dev)

            def in_ram() -> Iterator[tuple[Tensor, int]]:
                for idx in torch.randperm(len(data), generator=gen).split(batch_size):
                    yield data[idx.to(dev)], len(idx)

            return in_ram
        if dim is not None and source.dim is not None and source.dim != dim:
            raise ValueError(f"X has {source.dim} columns but this indexer was built for D = {dim}")
        if source.random_access:

            def gathered() -> Iterator[tuple[Tensor, int]]:
                for idx in torch.randperm(source.num_rows, generator=gen).split(batch_size):
                    share = source.take(idx[rank::world].numpy())
                    yield torch.from_numpy(share).to(dev), len(idx)

            return gathered

        part = source.shard(rank, world)
        local_batch = max(1, batch_size // world + (rank < batch_size % world))

        def streamed() -> Iterator[tuple[Tensor, int]]:
            # One draw from the shared generator per epoch (the same on every rank, so the
            # checkpointed state is every rank's), then a stream of this rank's own.
            mine = np.random.default_rng([int(rng.integers(2**63)), rank])
            batches = shuffled_batches(part, local_batch, mine)
            while True:
                xb = next(batches, None)
                if xb is not None and dim is not None and xb.shape[1] != dim:
                    raise ValueError(
                        f"X has {xb.shape[1]} columns but this indexer was built for D = {dim}"
                    )
                rows, d = _global_batch(xb, world, dev)
                if rows == 0:
                    return
                if xb is None:  # this rank's part is spent: an empty share of the step
                    xb = np.zeros((0, d), np.float32)
                yield torch.from_numpy(np.ascontiguousarray(xb)).to(dev), rows

        return streamed

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def latents(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    @torch.no_grad()
    def encode_raw(self, X: Any, backend: str = "auto") -> np.ndarray:
        """Codes without a collision suffix. `backend`: "engine" (Rust, CPU), "torch" (the
        model's device) or "auto" (Rust when the model is on the CPU). Both give the same codes."""
        self._require_fitted()
        if backend not in ("auto", "engine", "torch"):
            raise ValueError(f"backend must be 'auto', 'engine' or 'torch', got {backend!r}")
        dev = self._device()
        use_engine = backend == "engine" or (backend == "auto" and dev.type == "cpu")
        was_training = self.training
        self.eval()

        def codes_of(block: np.ndarray) -> np.ndarray:
            z = self.latents(torch.from_numpy(block).to(dev))
            return self._assign_engine(z) if use_engine else self._assign_torch(z).cpu().numpy()

        try:
            return encode_blocks(X, self.input_dim, self.num_codes, codes_of)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def reconstruct(self, X: Any) -> np.ndarray:
        """Decoder output for `X`: what the codes keep of each embedding."""
        self._require_fitted()
        x = as_embeddings(X, self.input_dim)
        was_training = self.training
        self.eval()
        dev = self._device()
        parts = [
            self(torch.from_numpy(x[s : s + ENCODE_CHUNK]).to(dev))[0].float().cpu().numpy()
            for s in range(0, len(x), ENCODE_CHUNK)
        ]
        self.train(was_training)
        return np.concatenate(parts) if parts else np.zeros_like(x)

    def _assign_engine(self, z: Tensor) -> np.ndarray:
        raise NotImplementedError

    def _assign_torch(self, z: Tensor) -> Tensor:
        raise NotImplementedError
