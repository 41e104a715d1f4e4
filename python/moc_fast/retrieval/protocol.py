"""The leave-one-out next-item protocol of SASRec, TIGER, P5 and IDGenRec.

For each user (items in time order) the last item is the test target and the second last the
validation target; every earlier prefix is a training example (its next item the target).
Histories are cut to the last `MAX_HISTORY` items. Ranking is over the whole catalogue.

Cold items (`cold_items`): a seeded share of the items is removed from every training
sequence, inputs and targets alike, so the models meet them only in validation and test
histories or as targets; recall on test targets among them measures cold-start retrieval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moc_fast.data.datasets import Interactions

MAX_HISTORY = 20
PAD = -1  # history padding (left), never an item


@dataclass
class Examples:
    """Next-item examples: `history (n, MAX_HISTORY)` item indices left-padded with PAD, the
    `target (n,)` item and the `user (n,)` each came from."""

    history: np.ndarray
    target: np.ndarray
    user: np.ndarray

    def __len__(self) -> int:
        return len(self.target)


@dataclass
class RetrievalSplits:
    train: Examples
    val: Examples
    test: Examples
    num_items: int
    cold: np.ndarray  # bool (num_items,): items held out of every training sequence

    def train_counts(self) -> np.ndarray:
        """How often each item is a training target (popularity)."""
        return np.bincount(self.train.target, minlength=self.num_items)


def user_sequences(data: Interactions) -> list[np.ndarray]:
    """Each user's items in time order."""
    order = np.lexsort((data.order, data.users))
    users, items = data.users[order], data.items[order]
    cuts = np.flatnonzero(np.diff(users)) + 1
    seqs = np.split(items.astype(np.int64), cuts)
    present = users[np.r_[0, cuts]] if len(users) else np.zeros(0, np.int64)
    out = [np.zeros(0, np.int64)] * data.num_users
    for u, s in zip(present, seqs, strict=True):
        out[int(u)] = s
    return out


def _window(seq: np.ndarray, end: int, length: int = MAX_HISTORY) -> np.ndarray:
    """The last `length` items before position `end`, left-padded with PAD."""
    h = seq[max(0, end - length) : end]
    return np.concatenate([np.full(length - len(h), PAD, np.int64), h])


def cold_items(num_items: int, share: float, seed: int) -> np.ndarray:
    """A seeded `share` of the items, as a boolean mask."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"cold share must be in [0, 1), got {share}")
    rng = np.random.default_rng(seed)
    mask = np.zeros(num_items, bool)
    mask[rng.choice(num_items, int(round(share * num_items)), replace=False)] = True
    return mask


def build_splits(
    data: Interactions, cold_share: float = 0.0, seed: int = 0, max_history: int = MAX_HISTORY
) -> RetrievalSplits:
    """Leave-one-out splits of every user with at least 3 items (others only train).

    With `cold_share` > 0, the seeded cold items are dropped from every training sequence
    before its prefixes are cut; validation and test histories keep them (a model sees a
    cold item only through its codes or text, never through a trained ID)."""
    cold = cold_items(data.num_items, cold_share, seed)
    tr: list[tuple[np.ndarray, int, int]] = []
    va, te = [], []
    for u, seq in enumerate(user_sequences(data)):
        if len(seq) >= 3:
            va.append((_window(seq, len(seq) - 2, max_history), seq[-2], u))
            te.append((_window(seq, len(seq) - 1, max_history), seq[-1], u))
            train_part = seq[:-2]
        else:
            train_part = seq
        train_part = train_part[~cold[train_part]]
        for t in range(1, len(train_part)):
            tr.append((_window(train_part, t, max_history), train_part[t], u))
    return RetrievalSplits(_examples(tr, max_history), _examples(va, max_history),
                           _examples(te, max_history), data.num_items, cold)  # fmt: skip


def _examples(rows: list[tuple[np.ndarray, int, int]], max_history: int) -> Examples:
    if not rows:
        return Examples(np.zeros((0, max_history), np.int64), np.zeros(0, np.int64),
                        np.zeros(0, np.int64))  # fmt: skip
    hist, target, user = zip(*rows, strict=True)
    return Examples(np.stack(hist), np.asarray(target, np.int64), np.asarray(user, np.int64))
