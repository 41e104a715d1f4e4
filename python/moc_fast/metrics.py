"""Analysis metrics: codebook health, discriminability and redundancy of semantic IDs."""

from __future__ import annotations

from typing import Any

import numpy as np

from moc_fast import engine


def entropy(labels: np.ndarray) -> float:
    """Shannon entropy (nats) of the empirical distribution of `labels` (N,) or rows (N, m)."""
    if len(labels) == 0:
        return 0.0
    arr = labels.reshape(len(labels), -1)
    _, counts = np.unique(arr, axis=0, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information 2·I(a;b) / (H(a) + H(b)) of two code columns; 0 when both
    are constant."""
    ha, hb = entropy(a), entropy(b)
    if ha + hb == 0:
        return 0.0
    mi = ha + hb - entropy(np.stack([a, b], 1))
    return float(max(0.0, 2 * mi / (ha + hb)))


def code_report(codes: np.ndarray, codebook_size: int) -> dict[str, Any]:
    """Health and information of codes `(N, M)` (no collision column)."""
    codes = np.asarray(codes, dtype=np.int64)
    n, m = codes.shape
    stats = engine.code_stats(codes, codebook_size)
    suffixed = engine.resolve_collisions(codes)
    after = engine.code_stats(suffixed, max(codebook_size, int(suffixed[:, -1].max(initial=0)) + 1))
    log_n = np.log(n) if n > 1 else 1.0
    pairs = [nmi(codes[:, i], codes[:, j]) for i in range(m) for j in range(i + 1, m)]
    return {
        "items": n,
        "num_codes": m,
        "utilization": [float(v) for v in stats["utilization"]],
        "perplexity": [float(v) for v in stats["perplexity"]],
        "codebook_entropy": [
            float(entropy(codes[:, j]) / np.log(codebook_size)) if codebook_size > 1 else 0.0
            for j in range(m)
        ],
        "collision_rate": float(stats["collision_rate"]),
        "collision_rate_with_suffix": float(after["collision_rate"]),
        "max_group": int(stats["max_group"]),
        "discriminability": float(entropy(codes) / log_n),
        "redundancy": float(np.mean(pairs)) if pairs else 0.0,
    }


def index_report(indexer: Any, X: Any) -> dict[str, Any]:
    """Everything worth knowing about an indexer on items `X`: reconstruction MSE,
    per-codebook utilization / perplexity / normalised entropy, collision rate before and after
    the collision code, discriminability (entropy of the full code tuple over items / log N) and
    redundancy (mean pairwise NMI between codebooks)."""
    from moc_fast.index.base import as_embeddings

    x = as_embeddings(X)
    codes = indexer.encode_raw(x)
    recon = indexer.reconstruct(x)
    report = code_report(codes, indexer.codebook_size)
    report["indexer"] = type(indexer).__name__
    report["recon_mse"] = float(((recon.astype(np.float64) - x) ** 2).mean())
    seconds = indexer.summary.get("seconds")
    report["fit_seconds"] = None if seconds is None else float(seconds)
    return report


def format_report(reports: dict[str, dict[str, Any]]) -> str:
    """A markdown table, one row per named report."""
    cols = [
        "recon_mse",
        "utilization",
        "perplexity",
        "collision_rate",
        "collision_rate_with_suffix",
        "discriminability",
        "redundancy",
        "fit_seconds",
    ]
    lines = ["| indexer | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in reports.items():
        cells = []
        for c in cols:
            v = r.get(c)
            if isinstance(v, list):
                cells.append(f"{np.mean(v):.3f} (min {np.min(v):.3f})")
            elif isinstance(v, float):
                cells.append(f"{v:.4g}")
            else:
                cells.append(str(v))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
