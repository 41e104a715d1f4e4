"""MoCEmbedding: one table per codebook + bottleneck fusion across the M code embeddings."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from moc_fast.kernels import (
    ACTIVATIONS,
    MODES,
    check_codes,
    choose_backend,
    moc_embedding,
    moc_embedding_torch,
)

BACKENDS = ("auto", "triton", "torch")


@torch._dynamo.assume_constant_result
def _auto_backend(device: torch.device, dtype: torch.dtype, m: int, e: int, r: int, mode: str,
                  compiling: bool) -> str:  # fmt: skip
    """`backend="auto"`'s choice, made in Python even while torch.compile traces (a constant
    of the graph, never a device query inside it). The cost model is linear in the batch
    size but for launches, so the choice is made at the headline batch, 65,536."""
    return choose_backend(device, dtype, m, e, r, mode, 65_536, compiling)


class MoCEmbedding(nn.Module):
    """Drop-in embedding of semantic codes: `forward(codes (*, M)) -> (*, M, embed_dim)`.

    Each codebook is a categorical field with its own `codebook_size × embed_dim` table; the
    stacked code embeddings E then pass a bottleneck across the M fields (MoC, Eq. 8):
    `gate`: E ⊙ σ(W_up·act(W_down·vec(E))), `residual`: E + W_up·act(W_down·vec(E)), or
    `none`. The output is still M fields of size e, so any CTR backbone takes it unchanged.
    `backend="auto"` runs the fused Triton op where docs/gpu.md's cost model says it beats
    torch (`choose_backend`: an NVIDIA GPU of compute capability >= 8.0, a shape within the
    kernels' range M ≤ 16, e ≤ 128, bottleneck ≤ 1024, TF32 or 16-bit dots) and torch
    elsewhere; `backend="triton"` insists on the kernels (and says why when it cannot).
    `check_codes=False` skips the range check of the codes: on the Triton path an
    out-of-range code then embeds as zeros and gets no gradient (silently wrong, never out of
    bounds); on the torch path `nn.functional.embedding` raises (CPU) or asserts (CUDA).
    """

    def __init__(
        self,
        num_codebooks: int,
        codebook_size: int,
        embed_dim: int,
        fusion: str = "gate",
        bottleneck: int | None = None,
        activation: str = "relu",
        backend: str = "auto",
        check_codes: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if min(num_codebooks, codebook_size, embed_dim) < 1:
            raise ValueError(
                "num_codebooks, codebook_size and embed_dim must be >= 1, got "
                f"{num_codebooks}, {codebook_size}, {embed_dim}"
            )
        if fusion not in MODES:
            raise ValueError(f"fusion must be one of {MODES}, got {fusion!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.num_codebooks, self.codebook_size, self.embed_dim = (
            num_codebooks,
            codebook_size,
            embed_dim,
        )
        self.fusion, self.activation, self.backend = fusion, activation, backend
        self.check_codes = check_codes
        width = num_codebooks * embed_dim
        self.bottleneck = bottleneck or max(1, width // 2)
        self.tables = nn.Parameter(
            torch.empty(num_codebooks, codebook_size, embed_dim, **factory)
        )
        if fusion != "none":
            self.w_down = nn.Parameter(torch.empty(width, self.bottleneck, **factory))
            self.b_down = nn.Parameter(torch.empty(self.bottleneck, **factory))
            self.w_up = nn.Parameter(torch.empty(self.bottleneck, width, **factory))
            self.b_up = nn.Parameter(torch.empty(width, **factory))
        else:
            self.register_parameter("w_down", None)
            self.register_parameter("b_down", None)
            self.register_parameter("w_up", None)
            self.register_parameter("b_up", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Tables ~ N(0, 0.01²), bottleneck weights Xavier-uniform, biases 0 (what
        `device="meta"` construction followed by `to_empty` and this call materialises)."""
        nn.init.normal_(self.tables, std=0.01)
        if self.w_down is not None:
            nn.init.xavier_uniform_(self.w_down)
            nn.init.xavier_uniform_(self.w_up)
            nn.init.zeros_(self.b_down)
            nn.init.zeros_(self.b_up)

    @property
    def num_embeddings(self) -> int:
        """Rows per table (`codebook_size`), named as in `nn.Embedding`."""
        return self.codebook_size

    @property
    def embedding_dim(self) -> int:
        return self.embed_dim

    def _use_triton(self, codes: Tensor) -> bool:
        if self.backend == "torch":
            return False
        if self.backend == "triton":
            return True
        r = self.bottleneck if self.fusion != "none" else 1
        return _auto_backend(codes.device, self.tables.dtype, self.num_codebooks, self.embed_dim,
                             r, self.fusion, torch.compiler.is_compiling()) == "triton"  # fmt: skip

    def forward(self, codes: Tensor) -> Tensor:
        """`codes (*, M)` int64/int32 -> `(*, M, embed_dim)`, like `nn.Embedding`."""
        if not isinstance(codes, Tensor):
            raise TypeError(
                f"codes must be a torch integer tensor (..., M={self.num_codebooks}), got "
                f"{type(codes).__module__}.{type(codes).__name__} (use torch.as_tensor)"
            )
        if codes.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"codes must be an int64 or int32 tensor, got {codes.dtype}")
        if codes.dim() < 1 or codes.shape[-1] != self.num_codebooks:
            raise ValueError(
                f"codes must have shape (..., M={self.num_codebooks}), got {tuple(codes.shape)}"
            )
        lead = codes.shape[:-1]
        flat = codes.reshape(-1, self.num_codebooks).long()
        if flat.shape[0] == 0:
            return self.tables.new_empty(*lead, self.num_codebooks, self.embed_dim)
        if self.check_codes:
            check_codes(flat, self.codebook_size)
        params = (self.tables, self.w_down, self.b_down, self.w_up, self.b_up)
        if self._use_triton(flat):
            # checked above, or skipped on request (an out-of-range code then reads zeros)
            out = moc_embedding(flat, *params, self.fusion, self.activation,
                                unsafe_skip_checks=True)  # fmt: skip
        else:
            out = moc_embedding_torch(flat, *params, self.fusion, self.activation)
        return out.reshape(*lead, self.num_codebooks, self.embed_dim)

    def extra_repr(self) -> str:
        return (
            f"M={self.num_codebooks}, K={self.codebook_size}, e={self.embed_dim}, "
            f"fusion={self.fusion}, bottleneck={self.bottleneck}, backend={self.backend}"
        )
