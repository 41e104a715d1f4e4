"""Indexer files: safetensors weights with a JSON header (format version, class, config,
training summary, checksum), written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from moc_fast.fileio import atomic_write_bytes
from moc_fast.index.base import Indexer, VQIndexer

FORMAT_VERSION = 1
META_KEY = "moc_fast"


def _classes() -> dict[str, type]:
    from moc_fast.index.kmeans import KMeansIndexer, RQKMeansIndexer
    from moc_fast.index.moc import MoCIndexer
    from moc_fast.index.rqvae import RQVAEIndexer

    return {c.__name__: c for c in (MoCIndexer, RQVAEIndexer, KMeansIndexer, RQKMeansIndexer)}


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _tensors(indexer: Indexer) -> dict[str, torch.Tensor]:
    if isinstance(indexer, VQIndexer):
        return {k: v.detach().cpu().contiguous() for k, v in indexer.state_dict().items()}
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in indexer.state().items()}


def save_indexer(indexer: Indexer, path: str | os.PathLike) -> None:
    """Write `indexer` to `path` atomically (a temporary file renamed over the target)."""
    if not indexer.fitted:
        raise RuntimeError(f"{type(indexer).__name__} is not fitted: nothing to save")
    tensors = _tensors(indexer)
    header = {
        "format_version": FORMAT_VERSION,
        "class": type(indexer).__name__,
        "config": indexer.config,
        "input_dim": indexer.input_dim,
        "summary": indexer.summary,
        "checksum": _checksum(tensors),
    }
    data = st_save(tensors, metadata={META_KEY: json.dumps(header)})
    atomic_write_bytes(path, data)


def _read_header(data: bytes, path: Path) -> dict[str, Any]:
    corrupt = f"{path} is not a valid moc_fast indexer file (truncated or corrupt)"
    if len(data) < 8:
        raise ValueError(corrupt)
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(corrupt)
    try:
        meta = json.loads(data[8 : 8 + n]).get("__metadata__", {})
        header = json.loads(meta[META_KEY])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(corrupt) from exc
    return header


def load_indexer(path: str | os.PathLike) -> Indexer:
    """Load an indexer written by `save`; raises ValueError on a truncated, altered or
    newer-version file, naming which."""
    path = Path(path)
    data = path.read_bytes()
    header = _read_header(data, path)
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {version!r}; this moc_fast reads up to {FORMAT_VERSION}: "
            "upgrade moc_fast to load it"
        )
    try:
        tensors = st_load(data)
    except Exception as exc:
        raise ValueError(
            f"{path} is not a valid moc_fast indexer file (truncated or corrupt)"
        ) from exc
    if _checksum(tensors) != header.get("checksum"):
        raise ValueError(f"{path} failed its checksum: the weights were altered or damaged")
    cls = _classes().get(header.get("class"))
    if cls is None:
        raise ValueError(f"{path} holds an unknown indexer class {header.get('class')!r}")
    config = dict(header["config"])
    config.pop("input_dim", None)
    indexer = cls(**config)
    if isinstance(indexer, VQIndexer):
        indexer.build(header["input_dim"])
        indexer.load_state_dict(tensors)
        indexer.eval()
    else:
        indexer.load_state({k: v.numpy() for k, v in tensors.items()}, header["input_dim"])
    indexer.summary = header["summary"]
    return indexer
