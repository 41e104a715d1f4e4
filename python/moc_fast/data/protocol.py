"""The CTR protocol: positives are interactions, seeded negatives the user never touched,
a time-ordered split, and the categorical fields user_id, item_id, brand, category."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from moc_fast.data.datasets import Interactions
from moc_fast.train import CTRData

ATTRIBUTES = ("brand", "category")


@dataclass
class CTRSplits:
    train: CTRData
    val: CTRData
    test: CTRData
    field_names: list[str]
    field_dims: list[int]
    num_items: int


def split_positions(
    data: Interactions, val_frac: float = 0.1, test_frac: float = 0.1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train / val / test interactions, in time order.

    With timestamps: a global split by time (the last `test_frac` of interactions are the test,
    the `val_frac` before them validation). Without: per user leave-last-out (last -> test,
    second last -> validation; users with fewer than 3 interactions stay in training).
    """
    n = len(data)
    if data.timestamps is not None:
        order = np.lexsort((np.arange(n), data.timestamps))
        n_test, n_val = int(round(n * test_frac)), int(round(n * val_frac))
        return (
            order[: n - n_test - n_val],
            order[n - n_test - n_val : n - n_test],
            order[n - n_test :],
        )
    counts = np.bincount(data.users, minlength=data.num_users)
    length = counts[data.users]
    eligible = length >= 3
    test = eligible & (data.order == length - 1)
    val = eligible & (data.order == length - 2)
    return np.flatnonzero(~(test | val)), np.flatnonzero(val), np.flatnonzero(test)


def sample_negatives(
    data: Interactions, users: np.ndarray, per_positive: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`per_positive` items per entry of `users`, uniformly among items the user never
    interacted with (in the whole data set). Vectorised rejection sampling."""
    seen = np.unique(data.users * data.num_items + data.items)
    if np.any(np.bincount(data.users, minlength=data.num_users) >= data.num_items):
        raise ValueError("a user interacted with every item: no negative can be sampled")
    u = np.repeat(users, per_positive)
    items = rng.integers(0, data.num_items, len(u))
    while True:
        bad = np.isin(u * data.num_items + items, seen, assume_unique=False)
        if not bad.any():
            return u, items
        items[bad] = rng.integers(0, data.num_items, int(bad.sum()))


def build_ctr(
    data: Interactions, negatives: int = 1, seed: int = 0, attributes: tuple[str, ...] = ATTRIBUTES
) -> CTRSplits:
    """Train / val / test CTR samples. Fields: user_id, item_id, then each attribute present.
    `CTRData.extra["items"]` holds each sample's item index, to join item codes or text."""
    if negatives < 1:
        raise ValueError(f"negatives must be >= 1, got {negatives}")
    rng = np.random.default_rng(seed)
    attr_cols, names, dims = [], ["user_id", "item_id"], [data.num_users, data.num_items]
    for a in attributes:
        vals = data.attribute(a)
        if vals is None or not any(vals):
            continue
        vocab: dict[str, int] = {"": 0}
        attr_cols.append(np.array([vocab.setdefault(v, len(vocab)) for v in vals], dtype=np.int64))
        names.append(a)
        dims.append(len(vocab))
    parts = []
    for idx in split_positions(data):
        pu, pi = data.users[idx], data.items[idx]
        nu, ni = sample_negatives(data, pu, negatives, rng)
        u, i = np.r_[pu, nu], np.r_[pi, ni]
        y = np.r_[np.ones(len(pu)), np.zeros(len(nu))].astype(np.float32)
        perm = rng.permutation(len(u))
        u, i, y = u[perm], i[perm], y[perm]
        x = np.stack([u, i, *[col[i] for col in attr_cols]], 1)
        parts.append(
            CTRData(torch.from_numpy(x), torch.from_numpy(y), extra={"items": torch.from_numpy(i)})
        )
    return CTRSplits(*parts, field_names=names, field_dims=dims, num_items=data.num_items)


def popularity_scores(splits: CTRSplits, data: CTRData) -> np.ndarray:
    """The popularity floor: each sample's score is its item's count of training positives."""
    train = splits.train
    counts = np.bincount(train.extra["items"][train.y > 0].numpy(), minlength=splits.num_items)
    return counts[data.extra["items"].numpy()].astype(np.float64)
