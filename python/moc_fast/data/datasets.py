"""Loaders of public recommendation data into one in-memory form, `Interactions`.

Formats: the sequence file + item text pair (`user_sequence.txt`, `item_text.txt`),
RecBole-style JSON (`*.inter.json`, `*.item.json`), RecBole atomic files
(`.inter` / `.item` / `.user` with typed headers such as `item_id:token`) and the raw
Amazon 2014 dumps (`reviews_*.json.gz`, `meta_*.json.gz`). Every malformed line raises a
ValueError naming the file and line.
"""

from __future__ import annotations

import ast
import gzip
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TEXT_FIELDS = ("title", "brand", "categories", "description")


@dataclass
class Interactions:
    """Positive user-item interactions and the item table.

    `users`/`items` index `user_ids`/`item_ids`; `order` is each interaction's position in its
    user's history (time order); `timestamps` is None when the source has none.
    """

    name: str
    user_ids: list[str]
    item_ids: list[str]
    users: np.ndarray
    items: np.ndarray
    order: np.ndarray
    timestamps: np.ndarray | None
    item_fields: dict[str, list[str]] = field(default_factory=dict)  # field -> value per item

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.users)

    def item_text(self, fields: Sequence[str] = TEXT_FIELDS) -> list[str]:
        """One text per item from whichever of `fields` exist, e.g. 'title. brand. cats'."""
        present = [f for f in fields if f in self.item_fields]
        if not present:
            raise ValueError(
                f"dataset {self.name!r} has no item text: none of {list(fields)} among its "
                f"item fields {sorted(self.item_fields)}"
            )
        cols = [self.item_fields[f] for f in present]
        return [". ".join(v for v in vals if v) for vals in zip(*cols, strict=True)]

    def subset_users(self, n: int) -> Interactions:
        """The first `n` users with their interactions and only the items they touched."""
        keep = self.users < n
        items_used = np.unique(self.items[keep])
        remap = np.full(self.num_items, -1, dtype=np.int64)
        remap[items_used] = np.arange(len(items_used))
        return Interactions(
            self.name,
            self.user_ids[:n],
            [self.item_ids[i] for i in items_used],
            self.users[keep],
            remap[self.items[keep]],
            self.order[keep],
            None if self.timestamps is None else self.timestamps[keep],
            {f: [v[i] for i in items_used] for f, v in self.item_fields.items()},
        )

    def attribute(self, name: str) -> list[str] | None:
        """A categorical item attribute: `brand`, or `category` (the top-level category)."""
        if name == "category" and "categories" in self.item_fields:
            return [c.split(",")[0].strip() for c in self.item_fields["categories"]]
        return self.item_fields.get(name)


class _Builder:
    """Accumulates (user, item, time) triples with stable index maps."""

    def __init__(self) -> None:
        self.user_index: dict[str, int] = {}
        self.item_index: dict[str, int] = {}
        self.rows: list[tuple[int, int, float]] = []

    def item(self, raw: str) -> int:
        return self.item_index.setdefault(raw, len(self.item_index))

    def add(self, user: str, item: str, time: float) -> None:
        u = self.user_index.setdefault(user, len(self.user_index))
        self.rows.append((u, self.item(item), time))

    def build(self, name: str, has_time: bool, fields: dict[str, dict[str, str]]) -> Interactions:
        if not self.rows:
            raise ValueError(f"dataset {name!r} has no interactions")
        arr = np.array(self.rows, dtype=np.float64)
        users, items, times = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2]
        # Time order within each user (stable: file order breaks ties).
        perm = np.lexsort((np.arange(len(arr)), times, users))
        users, items, times = users[perm], items[perm], times[perm]
        starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1]
        order = np.arange(len(users)) - np.repeat(starts, np.diff(np.r_[starts, len(users)]))
        item_ids = list(self.item_index)
        item_fields = {f: [vals.get(i, "") for i in item_ids] for f, vals in fields.items()}
        return Interactions(
            name,
            list(self.user_index),
            item_ids,
            users,
            items,
            order,
            times if has_time else None,
            item_fields,
        )


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield lineno, line.rstrip("\n")


def load_sequences(folder: str | Path, name: str | None = None) -> Interactions:
    """`user_sequence.txt` (`USER ITEM ITEM ...`, oldest first) + `item_text.txt`."""
    folder = Path(folder)
    seq, text = folder / "user_sequence.txt", folder / "item_text.txt"
    for p in (seq, text):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found (expected user_sequence.txt and item_text.txt)")
    b = _Builder()
    titles: dict[str, str] = {}
    for _, line in _lines(text):
        item, _, words = line.strip().partition(" ")
        titles[item] = words.strip()
        b.item(item)
    for lineno, line in _lines(seq):
        parts = line.split()
        if len(parts) < 2:
            raise ValueError(f"{seq}:{lineno}: expected 'USER_ID ITEM_ID ...', got {line!r}")
        for pos, item in enumerate(parts[1:]):
            b.add(parts[0], item, float(pos))
    return b.build(name or folder.name, False, {"title": titles})


def load_recbole_json(
    inter_path: str | Path, item_path: str | Path | None = None, name: str | None = None
) -> Interactions:
    """`{"USER": [ITEM, ...]}` in time order, and `{"ITEM": {"title": ..., ...}}`."""
    inter_path = Path(inter_path)
    try:
        seqs = json.loads(inter_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{inter_path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(seqs, dict):
        raise ValueError(f"{inter_path}: expected an object {{user: [items]}}")
    b = _Builder()
    fields: dict[str, dict[str, str]] = {}
    if item_path is not None:
        item_path = Path(item_path)
        try:
            meta = json.loads(item_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{item_path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
        for item, attrs in meta.items():
            b.item(str(item))
            for k, v in (attrs or {}).items():
                fields.setdefault(k, {})[str(item)] = _as_text(v)
    for user, items in seqs.items():
        if not isinstance(items, list):
            raise ValueError(f"{inter_path}: user {user!r}: expected a list of items")
        for pos, item in enumerate(items):
            b.add(str(user), str(item), float(pos))
    return b.build(name or inter_path.name.split(".")[0], False, fields)


def _as_text(v: object) -> str:
    if isinstance(v, list):
        flat = [x for sub in v for x in (sub if isinstance(sub, list) else [sub])]
        return ", ".join(str(x) for x in flat)
    return "" if v is None else str(v).strip()


def _atomic_rows(path: Path) -> tuple[list[tuple[str, str]], Iterator[tuple[int, list[str]]]]:
    lines = _lines(path)
    try:
        _, header = next(lines)
    except StopIteration:
        raise ValueError(f"{path}: empty file (expected a typed header)") from None
    cols = []
    for h in header.split("\t"):
        col, sep, typ = h.partition(":")
        if not sep or typ not in ("token", "token_seq", "float", "float_seq"):
            raise ValueError(
                f"{path}:1: header column {h!r} is not 'name:type' with type "
                "token, token_seq, float or float_seq"
            )
        cols.append((col, typ))

    def rows() -> Iterator[tuple[int, list[str]]]:
        for lineno, line in lines:
            vals = line.split("\t")
            if len(vals) != len(cols):
                raise ValueError(f"{path}:{lineno}: {len(vals)} fields, header has {len(cols)}")
            yield lineno, vals

    return cols, rows()


def load_recbole_atomic(prefix: str | Path, name: str | None = None) -> Interactions:
    """RecBole atomic files `PREFIX.inter` (+ optional `.item`): typed TSV headers."""
    prefix = Path(prefix)
    inter = prefix.with_name(prefix.name + ".inter")
    if not inter.exists():
        raise FileNotFoundError(f"{inter} not found")
    cols, rows = _atomic_rows(inter)
    names = [c for c, _ in cols]
    for need in ("user_id", "item_id"):
        if need not in names:
            raise ValueError(f"{inter}:1: no {need} column (header: {names})")
    ui, ii = names.index("user_id"), names.index("item_id")
    ti = names.index("timestamp") if "timestamp" in names else None
    b = _Builder()
    fields: dict[str, dict[str, str]] = {}
    item_file = prefix.with_name(prefix.name + ".item")
    if item_file.exists():
        icols, irows = _atomic_rows(item_file)
        inames = [c for c, _ in icols]
        if "item_id" not in inames:
            raise ValueError(f"{item_file}:1: no item_id column (header: {inames})")
        key = inames.index("item_id")
        for _, vals in irows:
            b.item(vals[key])
            for (col, _), v in zip(icols, vals, strict=True):
                if col != "item_id":
                    fields.setdefault(col, {})[vals[key]] = v.strip()
    for lineno, vals in rows:
        t = float(lineno)
        if ti is not None:
            try:
                t = float(vals[ti])
            except ValueError:
                raise ValueError(
                    f"{inter}:{lineno}: timestamp {vals[ti]!r} is not a number"
                ) from None
        b.add(vals[ui], vals[ii], t)
    return b.build(name or prefix.name, ti is not None, fields)


def _parse_record(path: Path, lineno: int, line: str) -> dict:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        try:  # the 2014 metadata dumps are Python literals, not JSON
            rec = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            raise ValueError(f"{path}:{lineno}: neither JSON nor a Python dict literal") from None
    if not isinstance(rec, dict):
        raise ValueError(f"{path}:{lineno}: expected one object per line")
    return rec


def load_amazon_raw(
    reviews: str | Path, meta: str | Path | None = None, name: str | None = None
) -> Interactions:
    """Raw Amazon 2014 dumps: `reviews_*.json.gz` (reviewerID, asin, unixReviewTime) and
    `meta_*.json.gz` (asin, title, brand, categories, description)."""
    reviews = Path(reviews)
    b = _Builder()
    fields: dict[str, dict[str, str]] = {}
    if meta is not None:
        meta = Path(meta)
        for lineno, line in _lines(meta):
            rec = _parse_record(meta, lineno, line)
            if "asin" not in rec:
                raise ValueError(f"{meta}:{lineno}: record without 'asin'")
            b.item(rec["asin"])
            for f in TEXT_FIELDS:
                if f in rec:
                    v = rec[f][0] if f == "categories" and rec[f] else rec[f]
                    fields.setdefault(f, {})[rec["asin"]] = _as_text(v)
    for lineno, line in _lines(reviews):
        rec = _parse_record(reviews, lineno, line)
        try:
            b.add(rec["reviewerID"], rec["asin"], float(rec["unixReviewTime"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{reviews}:{lineno}: expected reviewerID, asin and unixReviewTime"
            ) from None
    stem = reviews.name.removeprefix("reviews_").split(".")[0]
    return b.build(name or stem, True, fields)


def load_dataset(path: str | Path) -> Interactions:
    """Detect the format of a folder (or RecBole atomic prefix) and load it."""
    path = Path(path)
    if (path / "user_sequence.txt").exists():
        return load_sequences(path)
    if path.is_dir():
        inter_json = sorted(path.glob("*.inter.json"))
        if inter_json:
            item = inter_json[0].with_name(inter_json[0].name.replace(".inter.", ".item."))
            return load_recbole_json(inter_json[0], item if item.exists() else None)
        atomic = sorted(path.glob("*.inter"))
        if atomic:
            return load_recbole_atomic(atomic[0].with_suffix(""))
        reviews = sorted(path.glob("reviews_*.json*"))
        if reviews:
            metas = sorted(path.glob("meta_*.json*"))
            return load_amazon_raw(reviews[0], metas[0] if metas else None)
    elif path.with_name(path.name + ".inter").exists():
        return load_recbole_atomic(path)
    raise FileNotFoundError(
        f"{path}: no known dataset files (user_sequence.txt, *.inter.json, *.inter, reviews_*.json)"
    )


def open_dataset(spec: str | Path) -> Interactions:
    """`synthetic` (the embedded synthetic catalogue) or a dataset folder for `load_dataset`."""
    if str(spec) == "synthetic":
        from moc_fast.data.synthetic import synthetic_catalog

        return synthetic_catalog()
    return load_dataset(spec)
