"""Training with early stopping on validation NDCG@10, and full-ranking evaluation.

Score models (`scores(history) -> (B, N)`) are ranked exactly over every item; list models
(TIGER's `recommend(history, k)`) are ranked by their returned list, a target outside it
being a miss.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from moc_fast.progress import Progress
from moc_fast.retrieval.metrics import KS, metrics_from_ranks, ranks_from_lists, target_ranks
from moc_fast.retrieval.protocol import Examples

EVAL_BATCH = 256
SELECT = "ndcg@10"


@dataclass
class FitResult:
    best_epoch: int = 0
    best_val: dict[str, float] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, val, seconds

    def seconds_per_epoch(self) -> float:
        return float(np.mean([c["seconds"] for c in self.curve])) if self.curve else 0.0


def _tensors(ex: Examples, rows: np.ndarray | slice) -> tuple[torch.Tensor, ...]:
    return (torch.from_numpy(ex.history[rows]), torch.from_numpy(ex.target[rows]),
            torch.from_numpy(ex.user[rows]))  # fmt: skip


def _call_loss(model: nn.Module, h: torch.Tensor, t: torch.Tensor, u: torch.Tensor):
    if getattr(model, "user_buckets", 0):
        return model.loss(h, t, user=u)
    return model.loss(h, t)


@torch.no_grad()
def evaluate(model: nn.Module, ex: Examples, batch: int = EVAL_BATCH, beam: int = 20,
             limit: int | None = None) -> tuple[dict[str, float], np.ndarray]:  # fmt: skip
    """Recall/NDCG@{5,10} over `ex` (its first `limit` rows if given) and each row's rank
    (-1: not in a list model's returned list)."""
    was = model.training
    model.eval()
    n = len(ex) if limit is None else min(limit, len(ex))
    ranks, invalid = [], 0
    for s in range(0, n, batch):
        h, t, u = _tensors(ex, slice(s, min(n, s + batch)))
        if hasattr(model, "recommend"):
            kw = {"user": u} if getattr(model, "user_buckets", 0) else {}
            top, bad = model.recommend(h, max(KS), beam=beam, **kw)
            invalid += bad
            ranks.append(ranks_from_lists(top.numpy(), t.numpy()))
        else:
            ranks.append(target_ranks(model.scores(h), t).numpy())
    model.train(was)
    r = np.concatenate(ranks) if ranks else np.zeros(0, np.int64)
    out = metrics_from_ranks(r)
    if hasattr(model, "recommend"):
        out["invalid_items"] = float(invalid)
    return out, r


def fit(model: nn.Module, train: Examples, val: Examples, epochs: int = 50,
        batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 0.0, patience: int = 5,
        seed: int = 0, val_limit: int | None = None, progress: bool = True,
        desc: str = "retrieval") -> FitResult:  # fmt: skip
    """Adam on the model's loss; after each epoch, validation NDCG@10 (on the first
    `val_limit` validation users if given); stops after `patience` epochs without a gain and
    restores the best weights."""
    if len(train) == 0:
        raise ValueError("no training examples: every user has fewer than 3 items")
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay) if params else None
    result = FitResult()
    best_state: dict[str, Any] | None = None
    bar = Progress(epochs, desc, progress)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        total, seen = 0.0, 0
        if opt is not None:
            for idx in torch.randperm(len(train), generator=gen).split(batch_size):
                h, t, u = _tensors(train, idx.numpy())
                loss = _call_loss(model, h, t, u)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{desc}: training loss became {loss.item()}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, seen = total + loss.item() * len(idx), seen + len(idx)
        seconds = time.perf_counter() - start
        metrics, _ = evaluate(model, val, limit=val_limit)
        result.curve.append({"epoch": epoch, "loss": total / max(1, seen), "seconds": seconds,
                             **{f"val_{k}": v for k, v in metrics.items()}})  # fmt: skip
        bar.update(1, loss=f"{total / max(1, seen):.3f}", ndcg10=f"{metrics[SELECT]:.4f}")
        if metrics[SELECT] > result.best_val.get(SELECT, -1.0):
            result.best_epoch, result.best_val = epoch, metrics
            best_state = copy.deepcopy(model.state_dict())
        if opt is None or epoch - result.best_epoch >= patience:  # nothing to train, or stalled
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return result
