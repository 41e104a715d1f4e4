"""Data: item text readers and text-embedding providers (with an on-disk cache)."""

from moc_fast.data.items import read_item_text
from moc_fast.data.text import embed_texts

__all__ = ["embed_texts", "read_item_text"]
