"""Data loaders (fixture files written here, malformed ones too) and the CTR protocol."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from moc_fast.data.datasets import (
    load_amazon_raw,
    load_dataset,
    load_recbole_atomic,
    load_recbole_json,
    load_sequences,
)
from moc_fast.data.protocol import build_ctr, popularity_scores, split_positions

from conftest import real_dataset


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_sequence_format(tmp_path):
    _write(tmp_path / "user_sequence.txt", "u1 a b c\nu2 b c\n")
    _write(tmp_path / "item_text.txt", "a red lipstick\nb blue mascara\nc\nd unused item\n")
    d = load_sequences(tmp_path)
    assert (d.num_users, d.num_items, len(d)) == (2, 4, 5)
    assert d.timestamps is None
    assert [d.item_ids[i] for i in d.items[d.users == 0]] == ["a", "b", "c"]
    assert d.order[d.users == 0].tolist() == [0, 1, 2]
    assert d.item_text() == ["red lipstick", "blue mascara", "", "unused item"]


def test_sequence_format_malformed(tmp_path):
    _write(tmp_path / "user_sequence.txt", "u1 a b\nu2\n")
    _write(tmp_path / "item_text.txt", "a x\nb y\n")
    with pytest.raises(ValueError, match=r"user_sequence.txt:2"):
        load_sequences(tmp_path)
    with pytest.raises(FileNotFoundError, match="item_text.txt"):
        load_sequences(tmp_path / "missing")


def test_recbole_json(tmp_path):
    inter = _write(tmp_path / "Shop.inter.json", json.dumps({"0": [3, 1], "1": [1]}))
    _write(
        tmp_path / "Shop.item.json",
        json.dumps(
            {
                "1": {
                    "title": "Pen",
                    "brand": "Bic",
                    "categories": "Office, Pens",
                    "description": "",
                },
                "3": {
                    "title": "Ink",
                    "brand": "",
                    "categories": "Office, Ink",
                    "description": "Blue",
                },
            }
        ),
    )
    d = load_dataset(tmp_path)
    assert d.name == "Shop" and len(d) == 3
    assert d.item_text()[d.item_ids.index("3")] == "Ink. Office, Ink. Blue"
    assert d.attribute("category") == ["Office", "Office"]
    _write(inter, '{"0": [3, 1]')
    with pytest.raises(ValueError, match=r"Shop.inter.json:1: invalid JSON"):
        load_recbole_json(inter)


def test_recbole_atomic(tmp_path):
    _write(
        tmp_path / "ml.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "u1\ti1\t5\t300\nu1\ti2\t4\t100\nu2\ti1\t3\t200\n",
    )
    _write(
        tmp_path / "ml.item",
        "item_id:token\ttitle:token_seq\tbrand:token\n"
        "i1\tThe Movie\tStudio A\ni2\tSequel\tStudio B\n",
    )
    d = load_recbole_atomic(tmp_path / "ml")
    assert d.timestamps is not None and len(d) == 3
    # Within a user, time order: u1 saw i2 (t=100) before i1 (t=300).
    assert [d.item_ids[i] for i in d.items[d.users == 0]] == ["i2", "i1"]
    assert d.attribute("brand") == ["Studio A", "Studio B"]
    _write(tmp_path / "bad.inter", "user_id:token\titem_id\nu\ti\n")
    with pytest.raises(ValueError, match=r"bad.inter:1: header column 'item_id'"):
        load_recbole_atomic(tmp_path / "bad")
    _write(tmp_path / "short.inter", "user_id:token\titem_id:token\nu1\ti1\nu2\n")
    with pytest.raises(ValueError, match=r"short.inter:3: 1 fields, header has 2"):
        load_recbole_atomic(tmp_path / "short")


def test_amazon_raw_dumps(tmp_path):
    reviews = tmp_path / "reviews_Toys_5.json.gz"
    with gzip.open(reviews, "wt") as f:
        f.write(json.dumps({"reviewerID": "A", "asin": "X", "unixReviewTime": 20}) + "\n")
        f.write(json.dumps({"reviewerID": "A", "asin": "Y", "unixReviewTime": 10}) + "\n")
    meta = tmp_path / "meta_Toys.json.gz"
    with gzip.open(meta, "wt") as f:  # the 2014 metadata is Python literals
        f.write("{'asin': 'X', 'title': 'Robot', 'categories': [['Toys', 'Robots']]}\n")
        f.write("{'asin': 'Y', 'title': 'Ball', 'brand': 'Acme'}\n")
    d = load_dataset(tmp_path)
    assert d.name == "Toys_5" and d.timestamps is not None
    assert [d.item_ids[i] for i in d.items] == ["Y", "X"]
    assert d.item_text() == ["Robot. Toys, Robots", "Ball. Acme"]
    with gzip.open(reviews, "wt") as f:
        f.write('{"reviewerID": "A"}\n')
    with pytest.raises(ValueError, match=r"reviews_Toys_5.json.gz:1"):
        load_amazon_raw(reviews)


def test_dataset_without_text_and_unknown_folder(tmp_path):
    _write(tmp_path / "x.inter", "user_id:token\titem_id:token\nu\ti\n")
    with pytest.raises(ValueError, match="no item text"):
        load_recbole_atomic(tmp_path / "x").item_text()
    with pytest.raises(FileNotFoundError, match="no known dataset files"):
        load_dataset(tmp_path / "nothing")


@pytest.fixture(scope="module")
def beauty():
    return load_dataset(real_dataset("beauty"))


def test_real_beauty_loads(beauty):
    assert (beauty.num_users, beauty.num_items, len(beauty)) == (22363, 12101, 198502)


def test_leave_last_out_split_sizes_and_no_leak(beauty):
    train, val, test = split_positions(beauty)
    assert len(train) + len(val) + len(test) == len(beauty)
    assert len(test) == len(val) == beauty.num_users  # 5-core: every user has >= 3
    # The test interaction is each user's last, and never in training.
    last = np.bincount(beauty.users, minlength=beauty.num_users) - 1
    assert np.all(beauty.order[test] == last[beauty.users[test]])
    train_pairs = set(zip(beauty.users[train].tolist(), beauty.order[train].tolist(), strict=True))
    assert not train_pairs & set(
        zip(beauty.users[test].tolist(), beauty.order[test].tolist(), strict=True)
    )


def test_negatives_are_never_positives_of_that_user(beauty):
    splits = build_ctr(beauty, negatives=2, seed=3)
    positives = set((beauty.users * beauty.num_items + beauty.items).tolist())
    for part in (splits.train, splits.val, splits.test):
        neg = part.y.numpy() == 0
        keys = part.x[:, 0].numpy() * beauty.num_items + part.x[:, 1].numpy()
        assert not positives & set(keys[neg].tolist())
        assert neg.sum() == 2 * (~neg).sum()
    again = build_ctr(beauty, negatives=2, seed=3)
    assert np.array_equal(again.test.x.numpy(), splits.test.x.numpy())
    assert splits.field_names == ["user_id", "item_id"]


def test_global_time_split_for_timestamped_data(tmp_path):
    rows = "".join(f"u{k % 7}\ti{k % 11}\t{k}\n" for k in range(100))
    _write(tmp_path / "t.inter", "user_id:token\titem_id:token\ttimestamp:float\n" + rows)
    d = load_recbole_atomic(tmp_path / "t")
    train, val, test = split_positions(d)
    assert (len(train), len(val), len(test)) == (80, 10, 10)
    assert (
        d.timestamps[train].max()
        < d.timestamps[val].min()
        <= d.timestamps[val].max()
        < d.timestamps[test].min()
    )


def test_popularity_floor_is_above_chance(beauty):
    from moc_fast.train import auc_score

    splits = build_ctr(beauty, seed=0)
    assert auc_score(splits.test.y.numpy(), popularity_scores(splits, splits.test)) > 0.55


def test_ctr_samples_are_cached_by_their_inputs(beauty, tmp_path, monkeypatch, caplog):
    from moc_fast.data.protocol import ctr_key

    monkeypatch.setenv("MOC_FAST_CACHE", str(tmp_path))
    data = beauty.subset_users(2000)
    fresh = build_ctr(data, seed=1, cache=True)
    files = list((tmp_path / "ctr").glob("*.npz"))
    assert [f.stem for f in files] == [ctr_key(data, 1, 1)]
    cached = build_ctr(data, seed=1, cache=True)
    for name in ("train", "val", "test"):
        a, b = getattr(fresh, name), getattr(cached, name)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        assert torch.equal(a.extra["items"], b.extra["items"])
    assert (cached.field_names, cached.field_dims) == (fresh.field_names, fresh.field_dims)
    # Any input change is a new key: the seed, the ratio, the interactions themselves.
    assert len({ctr_key(data, 1, 1), ctr_key(data, 1, 2), ctr_key(data, 2, 1)}) == 3
    assert ctr_key(beauty.subset_users(1999), 1, 1) != ctr_key(data, 1, 1)
    # A corrupt cache file is rebuilt, not trusted.
    files[0].write_bytes(b"not a zip")
    with caplog.at_level("WARNING"):
        again = build_ctr(data, seed=1, cache=True)
    assert "unreadable" in caplog.text
    assert torch.equal(again.test.x, fresh.test.x)
