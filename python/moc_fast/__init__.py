"""moc_fast: semantic IDs for CTR models (Mixture-of-Codes, arXiv 2410.09560).

The CPU engine (Rust) turns item embeddings into codes fast: nearest-codeword search,
k-means, residual quantisation and semantic-ID bookkeeping. See the README for the API.
"""

from moc_fast.engine import (
    assign,
    assign_multi,
    assign_residual,
    code_stats,
    default_num_threads,
    kernel_name,
    kmeans,
    pack_codes,
    resolve_collisions,
    rq_kmeans,
    unpack_codes,
)

__version__ = "0.1.0"

__all__ = [
    "assign",
    "assign_multi",
    "assign_residual",
    "code_stats",
    "default_num_threads",
    "kernel_name",
    "kmeans",
    "pack_codes",
    "resolve_collisions",
    "rq_kmeans",
    "unpack_codes",
]
