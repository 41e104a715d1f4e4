"""moc_fast: semantic IDs for CTR models (Mixture-of-Codes, arXiv 2410.09560).

The CPU engine (Rust) turns item embeddings into codes fast: nearest-codeword search,
k-means, residual quantisation and semantic-ID bookkeeping. See the README for the API.
"""

from moc_fast.engine import (
    TIE_RTOL,
    assign,
    assign_multi,
    assign_residual,
    available_kernels,
    code_stats,
    default_num_threads,
    kernel_name,
    kmeans,
    pack_codes,
    resolve_collisions,
    rq_kmeans,
    topk_codes,
    unpack_codes,
    within_tie,
)

__version__ = "0.1.0"

# The indexers need torch (the `torch` extra); load them on first use so that the engine alone
# imports without it.
_LAZY = {
    "MoCIndexer": "moc_fast.index",
    "RQVAEIndexer": "moc_fast.index",
    "KMeansIndexer": "moc_fast.index",
    "RQKMeansIndexer": "moc_fast.index",
    "VectorQuantizer": "moc_fast.index",
    "load_indexer": "moc_fast.index",
    "MoCEmbedding": "moc_fast.nn",
    "CTRModel": "moc_fast.nn",
    "ItemCodes": "moc_fast.nn",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'moc_fast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    *_LAZY,
    "TIE_RTOL",
    "available_kernels",
    "within_tie",
    "assign",
    "assign_multi",
    "assign_residual",
    "code_stats",
    "default_num_threads",
    "kernel_name",
    "kmeans",
    "pack_codes",
    "resolve_collisions",
    "topk_codes",
    "rq_kmeans",
    "unpack_codes",
]
