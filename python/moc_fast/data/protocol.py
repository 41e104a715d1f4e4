"""The CTR protocol: positives are interactions, seeded negatives the user never touched,
a time-ordered split, and the categorical fields user_id, item_id, brand, category.

Built samples are cached on disk (`cache_dir()/ctr`) under a hash of every input: the
interactions, the attribute values, the negative ratio, the seed and `PROTOCOL_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import dataclass

import numpy as np
import torch

from moc_fast.data.datasets import Interactions
from moc_fast.fileio import atomic_save_npz, cache_dir
from moc_fast.train import CTRData

log = logging.getLogger(__name__)

ATTRIBUTES = ("brand", "category")
SAMPLERS = ("uniform", "split-matched")
PROTOCOL_VERSION = 1  # bump when build_ctr's output changes for the same inputs


@dataclass
class CTRSplits:
    train: CTRData
    val: CTRData
    test: CTRData
    field_names: list[str]
    field_dims: list[int]
    num_items: int

    def write_shards(self, folder, rows_per_shard: int = 1_000_000) -> None:
        """Each split as parquet shards in `folder/{train,val,test}` (`ParquetCTRDataset`
        streams them back), for sample tables trained on without holding them in memory."""
        from pathlib import Path

        from moc_fast.data.shards import write_ctr_shards

        for name in ("train", "val", "test"):
            write_ctr_shards(getattr(self, name), Path(folder) / name, rows_per_shard)


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
    data: Interactions,
    users: np.ndarray,
    per_positive: int,
    rng: np.random.Generator,
    pool: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`per_positive` items per entry of `users` that the user never interacted with (in the
    whole data set): uniform over the catalogue, or drawn from `pool` (items with repeats, e.g.
    a split's positives, so the negatives follow their popularity). Rejection sampling."""
    seen = np.unique(data.users * data.num_items + data.items)
    if np.any(np.bincount(data.users, minlength=data.num_users) >= data.num_items):
        raise ValueError("a user interacted with every item: no negative can be sampled")

    def draw(n: int) -> np.ndarray:
        if pool is None:
            return rng.integers(0, data.num_items, n)
        return pool[rng.integers(0, len(pool), n)]

    u = np.repeat(users, per_positive)
    items = draw(len(u))
    for _ in range(1000):
        bad = np.isin(u * data.num_items + items, seen, assume_unique=False)
        if not bad.any():
            return u, items
        items[bad] = draw(int(bad.sum()))
    raise ValueError(
        f"{int(bad.sum())} negatives could not be drawn from the pool of {len(pool)} items: "
        "their users interacted with (nearly) every item in it"
    )


def build_ctr(
    data: Interactions,
    negatives: int = 1,
    seed: int = 0,
    attributes: tuple[str, ...] = ATTRIBUTES,
    cache: bool = False,
    sampler: str = "uniform",
) -> CTRSplits:
    """Train / val / test CTR samples. Fields: user_id, item_id, then each attribute present.
    `CTRData.extra["items"]` holds each sample's item index, to join item codes or text.

    `sampler="uniform"`: negatives uniform over the catalogue (Guo et al.'s protocol; with
    leave-last-out the held-out item is colder than a random one, so popularity can be
    anti-predictive). `"split-matched"`: each negative is another user's positive from the same
    split that this user never touched, so negatives follow the positives' item popularity,
    popularity scores ≈ 0.5 and AUC measures personalisation.
    With `cache`, samples are read from / written to disk, keyed by all of the inputs."""
    if negatives < 1:
        raise ValueError(f"negatives must be >= 1, got {negatives}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if not cache:
        return _build_ctr(data, negatives, seed, attributes, sampler)
    key = ctr_key(data, negatives, seed, attributes, sampler)
    path = cache_dir() / "ctr" / f"{key}.npz"
    if path.exists():
        try:
            return _load_splits(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            log.warning("rebuilding CTR samples: cached %s unreadable (%s)", path, exc)
    splits = _build_ctr(data, negatives, seed, attributes, sampler)
    atomic_save_npz(path, **_split_arrays(splits))
    log.info("cached CTR samples of %s at %s", data.name, path)
    return splits


def ctr_key(
    data: Interactions,
    negatives: int,
    seed: int,
    attributes: tuple[str, ...] = ATTRIBUTES,
    sampler: str = "uniform",
) -> str:
    """A hash of everything `build_ctr` reads."""
    h = hashlib.sha256()
    spec = [PROTOCOL_VERSION, negatives, seed, list(attributes)]
    h.update(json.dumps(spec + ([sampler] if sampler != "uniform" else [])).encode())
    for a in (data.users, data.items, data.order, data.timestamps):
        h.update(b"-" if a is None else np.ascontiguousarray(a).tobytes())
    h.update(json.dumps([data.num_users, data.num_items]).encode())
    for a in attributes:
        h.update(json.dumps([a, data.attribute(a)]).encode())
    return h.hexdigest()[:24]


def _split_arrays(s: CTRSplits) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for name in ("train", "val", "test"):
        part: CTRData = getattr(s, name)
        arrays[f"{name}_x"] = part.x.numpy()
        arrays[f"{name}_y"] = part.y.numpy()
        arrays[f"{name}_items"] = part.extra["items"].numpy()
    meta = {"names": s.field_names, "dims": s.field_dims, "num_items": s.num_items}
    return {"meta": np.array(json.dumps(meta)), **arrays}


def _load_splits(path) -> CTRSplits:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        parts = [
            CTRData(
                torch.from_numpy(z[f"{n}_x"]),
                torch.from_numpy(z[f"{n}_y"]),
                extra={"items": torch.from_numpy(z[f"{n}_items"])},
            )
            for n in ("train", "val", "test")
        ]
    return CTRSplits(
        *parts, field_names=meta["names"], field_dims=meta["dims"], num_items=meta["num_items"]
    )


def _build_ctr(
    data: Interactions, negatives: int, seed: int, attributes: tuple[str, ...], sampler: str
) -> CTRSplits:
    rng = np.random.default_rng(seed)
    attr_cols, names, dims = attribute_columns(data, attributes)
    parts = []
    for idx in split_positions(data):
        pu, pi = data.users[idx], data.items[idx]
        pool = pi if sampler == "split-matched" else None
        nu, ni = sample_negatives(data, pu, negatives, rng, pool)
        u, i = np.r_[pu, nu], np.r_[pi, ni]
        y = np.r_[np.ones(len(pu)), np.zeros(len(nu))].astype(np.float32)
        perm = rng.permutation(len(u))
        u, i, y = u[perm], i[perm], y[perm]
        x = np.stack([u, i, *[col[i] for col in attr_cols]], 1)
        parts.append(
            CTRData(torch.from_numpy(x), torch.from_numpy(y), extra={"items": torch.from_numpy(i)})
        )
    return CTRSplits(*parts, field_names=names, field_dims=dims, num_items=data.num_items)


def attribute_columns(
    data: Interactions, attributes: tuple[str, ...] = ATTRIBUTES
) -> tuple[list[np.ndarray], list[str], list[int]]:
    """Each present attribute as an item -> id column (0 = missing), with the CTR field names
    and sizes (user_id and item_id first)."""
    attr_cols, names, dims = [], ["user_id", "item_id"], [data.num_users, data.num_items]
    for a in attributes:
        vals = data.attribute(a)
        if vals is None or not any(vals):
            continue
        vocab: dict[str, int] = {"": 0}
        attr_cols.append(np.array([vocab.setdefault(v, len(vocab)) for v in vals], dtype=np.int64))
        names.append(a)
        dims.append(len(vocab))
    return attr_cols, names, dims


def ranking_candidates(
    data: Interactions,
    test: CTRData,
    negatives: int = 99,
    seed: int = 0,
    attributes: tuple[str, ...] = ATTRIBUTES,
) -> CTRData:
    """For each test positive, the positive then `negatives` items its user never interacted
    with, uniform over the catalogue (with replacement: a repeat is possible, rarely):
    `users · (1 + negatives)` CTR rows in the test split's fields, grouped per user, y = 1 on
    each group's first row. One draw per seed, shared by every method (study v2's HR@10 /
    NDCG@10)."""
    if negatives < 1:
        raise ValueError(f"negatives must be >= 1, got {negatives}")
    pos = test.y.numpy() > 0
    users = test.x[:, 0].numpy()[pos]
    items = test.extra["items"].numpy()[pos]
    rng = np.random.default_rng([seed, 99])  # apart from build_ctr's stream for the same seed
    _, neg = sample_negatives(data, users, negatives, rng)
    cand = np.concatenate([items[:, None], neg.reshape(len(users), negatives)], 1).reshape(-1)
    u = np.repeat(users, negatives + 1)
    attr_cols, _, _ = attribute_columns(data, attributes)
    x = np.stack([u, cand, *[col[cand] for col in attr_cols]], 1)
    y = np.zeros(len(cand), dtype=np.float32)
    y[:: negatives + 1] = 1.0
    items_t = torch.from_numpy(cand)
    return CTRData(torch.from_numpy(x), torch.from_numpy(y), extra={"items": items_t})


def popularity_scores(splits: CTRSplits, data: CTRData) -> np.ndarray:
    """The popularity floor: each sample's score is its item's count of training positives."""
    train = splits.train
    counts = np.bincount(train.extra["items"][train.y > 0].numpy(), minlength=splits.num_items)
    return counts[data.extra["items"].numpy()].astype(np.float64)
