"""Training and evaluation of CTR models: Adam + BCE, early stopping on validation AUC."""

from __future__ import annotations

from moc_fast._extras import require

require("torch", "tqdm", feature="moc_fast.train")

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moc_fast.checkpoint import agree
from moc_fast.checkpoint import load as load_checkpoint
from moc_fast.checkpoint import rank_world as _distributed
from moc_fast.checkpoint import save as save_checkpoint
from moc_fast.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class CTRData:
    """Samples as pre-built tensors (batches are index slices, no per-sample Python)."""

    x: Tensor  # (N, F) int64 ids of the ordinary fields
    y: Tensor  # (N,) float labels in {0, 1}
    codes: Tensor | None = None  # (N, M) int64 semantic codes
    dense: Tensor | None = None  # (N, D) float dense text embeddings
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.x)
        for name in ("y", "codes", "dense"):
            t = getattr(self, name)
            if t is not None and len(t) != n:
                raise ValueError(f"CTRData.{name} has {len(t)} rows but x has {n}")

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device: torch.device) -> CTRData:
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return CTRData(mv(self.x), mv(self.y).float(), mv(self.codes), mv(self.dense), self.extra)

    def inputs(self, idx: Tensor | slice) -> tuple[Tensor, Tensor | None, Tensor | None]:
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return self.x[idx], pick(self.codes), pick(self.dense)


def auc_score(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC by the rank statistic (ties get average ranks)."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sorted_p = p[order]
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@torch.no_grad()
def predict(model: nn.Module, data: CTRData, batch_size: int = 16384) -> np.ndarray:
    """Click probabilities for every sample."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    d = data.to(dev)
    out = [
        torch.sigmoid(model(*d.inputs(slice(s, s + batch_size)))).float().cpu()
        for s in range(0, len(d), batch_size)
    ]
    model.train(was)
    return torch.cat(out).numpy()


def evaluate(model: nn.Module, data: CTRData, batch_size: int = 16384) -> dict[str, float]:
    """Test AUC and logloss."""
    return score_predictions(data.y.float().cpu().numpy(), predict(model, data, batch_size))


def score_predictions(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC and logloss of click probabilities `p` against labels `y`."""
    eps = 1e-7
    pc = np.clip(p, eps, 1 - eps)
    logloss = float(-(y * np.log(pc) + (1 - y) * np.log(1 - pc)).mean())
    return {"auc": auc_score(y, p), "logloss": logloss}


def _regularised(model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """(embedding tables, other weight matrices): `model.embedding_parameters()` where the
    model names its tables (CTRModel does), else none are embeddings."""
    named = getattr(model, "embedding_parameters", None)
    emb = list(named()) if named else []
    ids = {id(p) for p in emb}
    net = [p for p in model.parameters() if p.dim() >= 2 and id(p) not in ids]
    return emb, net


def _l2(params: list[Tensor], lam: float) -> Tensor | float:
    return lam * sum(p.pow(2).sum() for p in params) if lam and params else 0.0


def hit_ndcg_at_k(scores: np.ndarray, k: int = 10) -> dict[str, float]:
    """HR@k and NDCG@k of the positive in column 0 of `scores` (users, 1 + negatives). Ties
    count against the positive (a constant scorer ranks it last), so no model gains from
    them."""
    from moc_fast.retrieval.metrics import metrics_from_ranks

    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (users, 1 + negatives), got shape {scores.shape}")
    rank = (scores[:, 1:] >= scores[:, :1]).sum(1)  # 0 = ranked first
    m = metrics_from_ranks(rank, (k,))
    return {f"hr_{k}": m[f"recall@{k}"], f"ndcg_{k}": m[f"ndcg@{k}"]}


def items_by_training_count(splits_train: CTRData, num_items: int) -> np.ndarray:
    """Each item's number of training positives."""
    items = splits_train.extra["items"][splits_train.y > 0].numpy()
    return np.bincount(items, minlength=num_items)


COLD_BUCKETS = {"auc_items_0": (0, 0), "auc_items_1_2": (1, 2), "auc_items_3_9": (3, 9),
                "auc_items_10plus": (10, None)}  # fmt: skip


def auc_by_item_count(y: np.ndarray, p: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """AUC among the samples whose item had 0, 1–2, 3–9 or ≥ 10 training positives (NaN where a
    bucket lacks positives or negatives): how each method does on cold items."""
    out = {}
    for name, (lo, hi) in COLD_BUCKETS.items():
        keep = (counts >= lo) & (counts <= (hi if hi is not None else counts.max()))
        yk = y[keep]
        out[name] = auc_score(yk, p[keep]) if 0 < yk.sum() < len(yk) else math.nan
    return out


def early_stop(val_curve: list[float], patience: int, min_epochs: int = 0) -> tuple[int, int]:
    """(best epoch, epochs run) that `fit_ctr`'s rule gives on a validation-AUC curve
    (epochs from 1): stop `patience` epochs after the last improvement, but not before epoch
    `min_epochs`."""
    best, best_epoch = -math.inf, 0
    for epoch, auc in enumerate(val_curve, 1):
        if auc > best:
            best, best_epoch = auc, epoch
        elif _stops(epoch, best_epoch, patience, min_epochs):
            return best_epoch, epoch
    return best_epoch, len(val_curve)


def _stops(epoch: int, best_epoch: int, patience: int, min_epochs: int) -> bool:
    return epoch >= min_epochs and epoch - best_epoch >= patience


Batches = Iterable[dict[str, Tensor]]  # a DataLoader of {"x", "y", ["codes"], ["dense"]}


def _inputs(batch: dict[str, Tensor], dev: torch.device) -> tuple[Tensor, ...]:
    mv = lambda k: batch[k].to(dev, non_blocking=True) if k in batch else None  # noqa: E731
    return mv("x"), mv("codes"), mv("dense"), mv("y").float()


@torch.no_grad()
def _val_predictions(model: nn.Module, val: CTRData | Batches, dev: torch.device):
    """(labels, probabilities) of the whole validation set: each rank scores its share (a
    slice of a `CTRData`, or what its loader yields) and all ranks gather every share."""
    rank, world = _distributed()
    if isinstance(val, CTRData):
        part = slice(rank * len(val) // world, (rank + 1) * len(val) // world)
        mine = CTRData(val.x[part], val.y[part], *(None if t is None else t[part]
                                                   for t in (val.codes, val.dense)))  # fmt: skip
        y, p = mine.y.float().cpu().numpy(), predict(model, mine)
    else:
        was = model.training
        model.eval()
        ys, ps = [], []
        for batch in val:
            x, codes, dense, yb = _inputs(batch, dev)
            ps.append(torch.sigmoid(model(x, codes, dense)).float().cpu())
            ys.append(yb.cpu())
        model.train(was)
        y = torch.cat(ys).numpy() if ys else np.zeros(0, np.float32)
        p = torch.cat(ps).numpy() if ps else np.zeros(0, np.float32)
    if world > 1:
        import torch.distributed as dist

        shares: list[Any] = [None] * world
        dist.all_gather_object(shares, (y, p))
        y = np.concatenate([s[0] for s in shares])
        p = np.concatenate([s[1] for s in shares])
    return y, p


CHECKPOINT_VERSION = 2


def _rng_states(dev: torch.device) -> list[dict[str, Any]]:
    """Every rank's RNG states (CPU, and CUDA on a GPU), gathered in rank order."""
    cuda = torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None
    return agree({"cpu": torch.get_rng_state(), "cuda": cuda})


def _load_checkpoint(path: Path | None, dev: torch.device) -> dict[str, Any] | None:
    """`moc_fast.checkpoint.load`, then this rank's own RNG states restored from it."""
    state = load_checkpoint(path)
    if state is None:
        return None
    rank, _ = _distributed()
    rng = state["rng"][rank] if "rng" in state else {"cpu": state["torch_rng"], "cuda": None}
    torch.set_rng_state(rng["cpu"])
    if rng.get("cuda") is not None and dev.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], dev)
    return state


def _cpu_copy(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A host copy of a state dict (the best weights kept aside off the accelerator)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _ddp(model: nn.Module, dev: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel. `ItemCodes` tables (constant, and up to GBs at 100M
    items) are left out of DDP's per-forward buffer broadcast; other buffers are still synced."""
    from torch.nn.parallel import DistributedDataParallel

    from moc_fast.nn.item_codes import ItemCodes

    tables = [f"{n}.table" for n, m in model.named_modules() if isinstance(m, ItemCodes)]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, tables)
    return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def fit_ctr(
    model: nn.Module,
    train: CTRData | Batches,
    val: CTRData | Batches,
    epochs: int = 20,
    batch_size: int = 2048,
    lr: float = 1e-3,
    weight_decay: float = 1e-6,
    patience: int = 3,
    min_epochs: int = 0,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    amp: bool = True,
    desc: str = "fit_ctr",
    embedding_l2: float = 0.0,
    net_l2: float = 0.0,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
) -> dict[str, Any]:
    """Adam + BCE; stop after `patience` epochs without a better validation AUC and restore
    the best weights. Returns the history (per-epoch loss / val AUC) and the best epoch.
    `min_epochs`: no early stop before that epoch (a warm-up, like Keras' `start_from_epoch`:
    under uniform negatives validation AUC can first reach the popularity level and then dip
    for a few epochs before personalisation takes over; a short patience stops inside the dip).
    `desc` labels the progress (one step per epoch; a batch bar too on a terminal).
    `embedding_l2` / `net_l2` add λ·Σ‖θ‖² over the embedding tables / the other weight
    matrices to the loss (FuxiCTR's `embedding_regularizer` / `net_regularizer`).

    `train` and `val` are `CTRData` (in memory; batches are seeded index slices) or
    `DataLoader`s yielding `{"x", "y", ["codes"], ["dense"]}` batches (e.g. over a
    `ParquetCTRDataset`; `set_epoch` is called on its dataset or sampler each epoch).

    Under `torchrun` (an initialised `torch.distributed` group) the model is wrapped in
    `DistributedDataParallel`: with `CTRData` every rank takes its share of each global batch
    of `batch_size` rows (so the run matches one process with the same global batch); loaders
    shard themselves (`ParquetCTRDataset` does, by rank). Validation AUC is computed on the
    predictions of all ranks gathered, not averaged per rank. Only rank 0 writes.

    `checkpoint`: a file written (atomically, by rank 0) after every epoch, and every
    `checkpoint_every` steps within one, with the model, optimizer, every rank's RNG states
    (CPU and CUDA), the epoch and step, the history and the best weights so far; when it exists
    at the start, training resumes where it was written and continues exactly as the
    uninterrupted run (a loader's batches before that step are read again and skipped). Every
    rank must see the same file, with the same number of ranks, else a `ValueError`.
    """
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1 or None, got {checkpoint_every}")
    if isinstance(train, CTRData) and len(train) == 0 or isinstance(val, CTRData) and not len(val):
        raise ValueError("train and val must be non-empty")
    if min_epochs < 0:
        raise ValueError(f"min_epochs must be >= 0, got {min_epochs}")
    dev = (
        torch.device(device)
        if device
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    rank, world = _distributed()
    model.to(dev)
    in_memory = isinstance(train, CTRData)
    tr = train.to(dev) if in_memory else None
    if in_memory and world > 1 and batch_size < world:
        raise ValueError(f"batch_size {batch_size} must be >= the world size {world}")
    # Dropout draws from the global RNG: seed it for this run only (restored afterwards), per
    # rank (ranks see different rows and must not share masks).
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed + rank)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        emb_params, net_params = _regularised(model)
        gen = torch.Generator().manual_seed(seed)
        use_amp = amp and dev.type == "cuda"
        best: dict[str, Any] = {"auc": -1.0, "epoch": 0, "state": None}
        history: list[dict[str, Any]] = []
        first, skip, partial = 1, 0, (0.0, 0)
        ckpt = Path(checkpoint) if checkpoint is not None else None
        state = _load_checkpoint(ckpt, dev)  # before DDP wraps the model (it broadcasts it)
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
            best, history = state["best"], state["history"]
            first, skip = state["epoch"] + 1, state.get("step", 0)
            partial = tuple(state.get("partial", (0.0, 0)))
            log.info("resuming %s after epoch %d, step %d", ckpt, state["epoch"], skip)
            del state
        net = _ddp(model, dev) if world > 1 else model

        def save(epoch_done: int, step: int, epoch_gen: Tensor, part: tuple[float, int]) -> None:
            if ckpt is None:
                return
            rng = _rng_states(dev)  # a collective: every rank takes part, rank 0 writes
            if rank == 0:
                save_checkpoint(ckpt, {
                    "version": CHECKPOINT_VERSION, "world": world, "epoch": epoch_done,
                    "step": step, "partial": part, "model": model.state_dict(),
                    "optimizer": opt.state_dict(), "generator": epoch_gen, "rng": rng,
                    "best": best, "history": history,
                })  # fmt: skip

        start = time.perf_counter()
        epochs_bar = Progress(epochs, desc, progress)
        if first > 1:
            epochs_bar.update(first - 1)
        stopped = first > 1 and not skip and _stops(first - 1, best["epoch"], patience, min_epochs)
        for epoch in range(first, epochs + 1):
            if stopped:
                break
            model.train()
            epoch_gen = gen.get_state()  # where this epoch's order comes from (for a resume)
            total, batches = partial if epoch == first else (0.0, 0)
            if in_memory:
                perm = torch.randperm(len(tr), generator=gen).to(dev)
                chunks = [c[rank::world] for c in perm.split(batch_size) if len(c) >= world]
                n_steps = len(chunks)
                steps = ((tr.inputs(i) + (tr.y[i],)) for i in chunks)
            else:
                for obj in (getattr(train, "dataset", None), getattr(train, "sampler", None)):
                    if hasattr(obj, "set_epoch"):
                        obj.set_epoch(epoch)
                steps = (_inputs(b, dev) for b in train)
                n_steps = len(train) if hasattr(train, "__len__") else 0
            bar = Progress(n_steps, f"{desc} epoch {epoch}", progress, plain=False)
            for b, (x, codes, dense, y) in enumerate(steps):
                if epoch == first and b < skip:
                    continue  # done before the checkpoint this run resumed from
                with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits = net(x, codes, dense)
                loss = F.binary_cross_entropy_with_logits(logits.float(), y)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"training loss became {loss.item()} at epoch {epoch}, batch {b}"
                    )
                opt.zero_grad(set_to_none=True)
                reg = _l2(emb_params, embedding_l2) + _l2(net_params, net_l2)
                (loss + reg).backward()
                opt.step()
                total += loss.item()
                batches += 1
                bar.update()
                if checkpoint_every and (b + 1) % checkpoint_every == 0:
                    save(epoch - 1, b + 1, epoch_gen, (total, batches))
            bar.close()
            if not batches:
                raise ValueError("the training data gave no batches")
            y_val, p_val = _val_predictions(model, val, dev)
            val_auc = auc_score(y_val, p_val)
            history.append({"epoch": epoch, "train_loss": total / batches, "val_auc": val_auc})
            log.info("epoch %d: train loss %.4f, val AUC %.4f", epoch, total / batches, val_auc)
            epochs_bar.update(1, loss=f"{total / batches:.4f}", val_auc=f"{val_auc:.4f}")
            if val_auc > best["auc"]:
                best = {"auc": val_auc, "epoch": epoch, "state": _cpu_copy(model.state_dict())}
            elif _stops(epoch, best["epoch"], patience, min_epochs):
                stopped = True
            save(epoch, 0, gen.get_state(), (0.0, 0))
        epochs_bar.close()
        model.load_state_dict(best["state"])
        return {
            "best_epoch": best["epoch"],
            "best_val_auc": best["auc"],
            "epochs_run": len(history),
            "history": history,
            "seconds": time.perf_counter() - start,
        }
