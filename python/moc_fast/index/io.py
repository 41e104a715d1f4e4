"""Indexer files: safetensors weights with a JSON header (format version, class, config,
training summary, checksum), written atomically.

Format 2 (this writer): the SHA-256 checksum covers the header (every field but the checksum,
as canonical JSON) and every tensor, so an edited `metric` is caught like a flipped weight.
Format 1 files (tensors only) still load. Before any model is built, the header's config must
name only the class's parameters and imply exactly the stored tensors' shapes, so a damaged
or hand-edited config is a `ValueError`, never a `TypeError` or a huge allocation.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
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

FORMAT_VERSION = 2
META_KEY = "moc_fast"
MAX_INPUT_DIM = 1 << 20  # beyond any embedding model; a larger input_dim is a damaged header

log = logging.getLogger(__name__)


def _classes() -> dict[str, type]:
    from moc_fast.index.kmeans import KMeansIndexer, RQKMeansIndexer
    from moc_fast.index.moc import MoCIndexer
    from moc_fast.index.rqvae import RQVAEIndexer

    return {c.__name__: c for c in (MoCIndexer, RQVAEIndexer, KMeansIndexer, RQKMeansIndexer)}


def _checksum(tensors: dict[str, torch.Tensor], header: dict[str, Any] | None = None) -> str:
    """SHA-256 of the header (without its checksum; format >= 2) and the tensors."""
    h = hashlib.sha256()
    if header is not None:
        fields = {k: v for k, v in header.items() if k != "checksum"}
        h.update(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode())
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
    }
    header["checksum"] = _checksum(tensors, header)
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
    covered = header if version >= 2 else None  # format 1 summed the tensors only
    if _checksum(tensors, covered) != header.get("checksum"):
        what = "header or weights" if covered is not None else "weights"
        raise ValueError(f"{path} failed its checksum: the {what} were altered or damaged")
    if covered is None:
        log.warning("%s is a format 1 file: its header is not covered by the checksum", path)
    cls = _classes().get(header.get("class"))
    if cls is None:
        raise ValueError(f"{path} holds an unknown indexer class {header.get('class')!r}")
    input_dim = header.get("input_dim")
    if isinstance(input_dim, bool) or not isinstance(input_dim, int):
        raise ValueError(f"{path}: header input_dim must be an integer, got {input_dim!r}")
    if not 1 <= input_dim <= MAX_INPUT_DIM:
        raise ValueError(f"{path}: header input_dim = {input_dim} is outside [1, {MAX_INPUT_DIM}]")
    config = _config(header.get("config"), cls, path)
    if issubclass(cls, VQIndexer):
        _check_shapes(cls, config, input_dim, tensors, path)
    indexer = _construct(cls, config, path)
    if isinstance(indexer, VQIndexer):
        indexer.build(input_dim)
        indexer.load_state_dict(tensors)
        indexer.eval()
    else:
        try:
            indexer.load_state({k: v.numpy() for k, v in tensors.items()}, input_dim)
        except ValueError as exc:
            msg = f"{path}: header config does not match the stored tensors: {exc}"
            raise ValueError(msg) from exc
    indexer.summary = header.get("summary") or {}
    return indexer


def _config(config: Any, cls: type, path: Path) -> dict[str, Any]:
    """The header's config, checked against `cls`'s parameters."""
    if not isinstance(config, dict):
        raise ValueError(f"{path}: header config must be a JSON object, got {config!r}")
    config = {k: v for k, v in config.items() if k != "input_dim"}
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - params)
    if unknown:
        raise ValueError(
            f"{path}: header config has {unknown}, which {cls.__name__} does not take "
            f"(it takes {sorted(params)}): a newer or edited file"
        )
    return config


def _construct(cls: type, config: dict[str, Any], path: Path) -> Any:
    try:
        return cls(**config)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{path}: header config is not valid for {cls.__name__}: {exc}") from exc


def _check_shapes(
    cls: type, config: dict[str, Any], input_dim: int, tensors: dict[str, torch.Tensor], path: Path
) -> None:
    """The tensors the config implies, built on the meta device (no memory), must be the stored
    ones: a config edited to huge sizes is refused here instead of allocated."""
    with torch.device("meta"):
        probe = _construct(cls, config, path)
        try:
            probe.build(input_dim)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{path}: header config cannot build {cls.__name__}: {exc}") from exc
    want = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if want != got:
        diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))[:3]
        shown = ", ".join(f"{k}: config {want.get(k)} vs stored {got.get(k)}" for k in diff)
        raise ValueError(f"{path}: header config does not match the stored tensors ({shown})")
