"""Readers for item text files."""

from __future__ import annotations

from pathlib import Path


def read_item_text(path: str | Path, limit: int | None = None) -> tuple[list[str], list[str]]:
    """`item_text.txt` (one item a line: `ITEM_ID word word ...`) -> (item ids, texts).

    An item whose text is empty keeps an empty string (the real Beauty file has one).
    Raises ValueError naming the file and line for a repeated id, or for a file with no text.
    """
    path = Path(path)
    ids: list[str] = []
    texts: list[str] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            item, _, text = line.strip().partition(" ")
            if item in seen:
                raise ValueError(f"{path}:{lineno}: item {item!r} appears twice")
            seen.add(item)
            ids.append(item)
            texts.append(text.strip())
            if limit is not None and len(ids) >= limit:
                break
    if not any(texts):
        raise ValueError(f"{path}: no item text found (expected lines 'ITEM_ID text...')")
    return ids, texts
