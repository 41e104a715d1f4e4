"""Triton kernels (GPU; tested on CPU with TRITON_INTERPRET=1), each beside its torch reference."""

from moc_fast._extras import require

require("torch", feature="moc_fast.kernels (MoC embedding op)")

from moc_fast.kernels.cost_model import choose_backend
from moc_fast.kernels.moc_embedding import (
    ACTIVATIONS,
    MODES,
    check_codes,
    check_supported,
    moc_embedding,
    moc_embedding_torch,
    tolerance,
    triton_available,
    triton_unsupported_reason,
)

__all__ = [
    "ACTIVATIONS",
    "MODES",
    "check_codes",
    "check_supported",
    "choose_backend",
    "moc_embedding",
    "moc_embedding_torch",
    "tolerance",
    "triton_available",
    "triton_unsupported_reason",
]
