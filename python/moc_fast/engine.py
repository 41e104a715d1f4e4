"""Validated numpy/torch front of the Rust CPU engine (`moc_fast._native`).

This is the only module that imports `_native`. It accepts numpy arrays and torch CPU tensors
(zero-copy when already float32/int64 and C-contiguous), and turns every wrong input into a
`TypeError` or `ValueError` that names the argument and says what was expected.

Conversions (documented behaviour, not errors):
- float64 and float16 inputs are converted to float32 (a copy);
- non-contiguous arrays are copied to C order;
- integer codes of any integer dtype are converted to int64.
Rejected: complex, bool, object and integer dtypes where floats are expected; tensors on a GPU
(move them with `.cpu()`); arrays of the wrong rank; NaN or inf values (the message gives the
first bad row).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moc_fast import _native

__all__ = [
    "assign",
    "assign_multi",
    "assign_residual",
    "kmeans",
    "rq_kmeans",
    "pack_codes",
    "unpack_codes",
    "resolve_collisions",
    "code_stats",
    "default_num_threads",
    "kernel_name",
    "available_kernels",
    "within_tie",
    "TIE_RTOL",
]

# The tie contract: two codes for one row are interchangeable when their exact scores differ
# by at most TIE_RTOL times the row's scale (‖x‖² + ‖c‖² for L2, ‖x‖·‖c‖ for inner products,
# the larger codeword of the two). Measured on near-twin codebooks at D = 32, 384 and 4096,
# on an AVX-512 CPU (avx512, avx2, portable), the kernels and torch disagreed only within
# 3e-7 of the scale: TIE_RTOL leaves 30x.
TIE_RTOL = 1e-5

_FLOATS = (np.float32, np.float64, np.float16)


def _to_numpy(name: str, a: Any) -> np.ndarray:
    """A numpy view of `a`; torch CPU tensors are shared, not copied."""
    if isinstance(a, np.ndarray):
        return a
    mod = type(a).__module__
    if mod.startswith("torch"):
        if a.device.type != "cpu":
            raise TypeError(f"{name} is a torch tensor on {a.device}; expected a CPU tensor")
        return a.detach().numpy()
    try:
        return np.asarray(a)
    except Exception as exc:  # pragma: no cover - numpy's own message is kept
        raise TypeError(f"{name} must be array-like, got {type(a).__name__}") from exc


def _floats(name: str, a: Any, ndim: int | tuple[int, ...]) -> np.ndarray:
    arr = _to_numpy(name, a)
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{name} must be {want}, got shape {arr.shape}")
    if arr.dtype.type not in _FLOATS:
        raise TypeError(f"{name} must be float32 (float64/float16 are converted), got {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _ints(name: str, a: Any, ndim: int) -> np.ndarray:
    arr = _to_numpy(name, a)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _threads(num_threads: int | None) -> int:
    if num_threads is None:
        return 0
    return _count("num_threads", num_threads, maximum=_MAX_THREADS)


def assign(
    x: Any, codebook: Any, metric: str = "l2", *, num_threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest codeword of each row of `x (N, d)` in `codebook (K, d)`.

    Returns `codes` (int64, N) and `dist` (float32, N): the squared L2 distance for
    `metric="l2"`, the (largest) inner product for `metric="ip"`. Ties go to the lowest index,
    so results do not depend on the thread count.
    """
    xs = _floats("x", x, 2)
    cb = _floats("codebook", codebook, 2)
    return _native.assign(xs, cb, metric, _threads(num_threads))


def assign_multi(
    x: Any, codebooks: Any, metric: str = "l2", *, num_threads: int | None = None
) -> np.ndarray:
    """Codes `(N, M)` of `x` against M independent codebooks `(M, K, d)` in one pass.

    `x` is `(N, M, d)` (one latent per codebook) or `(N, d)` (one latent shared by all).
    """
    xs = _floats("x", x, (2, 3))
    cbs = _floats("codebooks", codebooks, 3)
    return _native.assign_multi(xs, cbs, metric, _threads(num_threads))


def assign_residual(
    x: Any, codebooks: Any, *, num_threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Residual quantisation through L codebooks `(L, K, d)`: codes `(N, L)`, residual `(N, d)`."""
    xs = _floats("x", x, 2)
    cbs = _floats("codebooks", codebooks, 3)
    return _native.assign_residual(xs, cbs, _threads(num_threads))


def kmeans(
    x: Any,
    k: int,
    iters: int = 25,
    seed: int = 0,
    init: Any = "k-means++",
    metric: str = "l2",
    *,
    num_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd's k-means: `(centroids (k, d), labels (N,), inertia)`.

    `init` is `"k-means++"`, `"random"` (k distinct rows, as FAISS), or an array of initial
    centroids `(k, d)` (to compare with another library from the same start); `metric="ip"`
    runs spherical k-means (rows and centroids normalised; inertia is the sum of
    1 - cosine). Empty clusters are re-seeded with the points farthest from their centroids.
    Same seed, same result, whatever the threads. Stops early once the labels stop changing.
    """
    xs = _floats("x", x, 2)
    k, iters = _count("k", k), _count("iters", iters, minimum=0)
    seed = _count("seed", seed, minimum=0, maximum=2**64 - 1)
    if not isinstance(init, str):
        cs = _floats("init", init, 2)
        if cs.shape != (k, xs.shape[1]):
            raise ValueError(f"init centroids must have shape (k, d) = {(k, xs.shape[1])}, "
                             f"got {cs.shape}")  # fmt: skip
        centroids, labels, inertia, _ = _native.kmeans_from(
            xs, cs, iters, metric, _threads(num_threads)
        )
        return centroids, labels, inertia
    centroids, labels, inertia, _ = _native.kmeans(
        xs, k, iters, seed, init, metric, _threads(num_threads)
    )
    return centroids, labels, inertia


def rq_kmeans(
    x: Any,
    levels: int,
    k: int,
    iters: int = 25,
    seed: int = 0,
    init: str = "k-means++",
    *,
    num_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Residual k-means: `(codebooks (levels, k, d), codes (N, levels), inertia)`.

    Level l clusters the residual that levels < l left; `inertia` is the final Σ‖residual‖².
    """
    xs = _floats("x", x, 2)
    levels, k = _count("levels", levels), _count("k", k)
    iters = _count("iters", iters, minimum=0)
    seed = _count("seed", seed, minimum=0, maximum=2**64 - 1)
    return _native.rq_kmeans(xs, levels, k, iters, seed, init, _threads(num_threads))


_MAX_THREADS = 4096  # the engine's limit (rust/src/parallel.rs MAX_THREADS)
_MAX_SIZE = 2**63 - 1


def _count(name: str, v: Any, minimum: int = 1, maximum: int = _MAX_SIZE) -> int:
    """`v` as a Python int in [minimum, maximum], else a ValueError naming `name` (sizes beyond
    what the engine can hold are refused here, not overflowed there)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    if not minimum <= v <= maximum:
        raise ValueError(f"{name} must be an integer in [{minimum}, {maximum}], got {v!r}")
    return int(v)


def pack_codes(codes: Any, bits: int) -> np.ndarray:
    """Pack each row of `codes (N, m)` into one uint64 (first code in the highest bits).

    Needs `bits * m <= 64` and `0 <= code < 2**bits`.
    """
    return _native.pack_codes(_ints("codes", codes, 2), _count("bits", bits, maximum=64))


def unpack_codes(ids: Any, m: int, bits: int) -> np.ndarray:
    """Inverse of `pack_codes`: `(N, m)` int64 codes from N uint64 IDs."""
    arr = _to_numpy("ids", ids)
    if arr.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"ids must hold integers, got {arr.dtype}")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise ValueError("ids must be non-negative")
    m, bits = _count("m", m, maximum=64), _count("bits", bits, maximum=64)
    return _native.unpack_codes(np.ascontiguousarray(arr, dtype=np.uint64), m, bits)


def resolve_collisions(codes: Any) -> np.ndarray:
    """Append each item's rank among earlier items with the same full code tuple.

    The result `(N, M+1)` has unique rows: TIGER's extra code.
    """
    out, _ = _native.resolve_collisions(_ints("codes", codes, 2))
    return out


def topk_codes(
    logp: Any, codes: Any, k: int, *, num_threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of a catalogue scored through its codes: item n scores
    `Σ_m logp[b, m, codes[n, m]]` (summed in code order) for each query row b of `logp (B, M, K)`.
    `codes (N, M)` may be uint8/uint16/int32/int64 (ItemCodes' compact dtypes are read as
    they are). Returns items `(B, min(k, N))` int64 and their scores, best first; ties go to
    the lower item index, so the result does not depend on the thread count. `logp` may hold
    -inf (an impossible code) but not NaN or +inf, which would make NaN scores whose rank
    differs between CPUs."""
    lp = _floats("logp", logp, 3)
    arr = _to_numpy("codes", codes)
    if arr.ndim != 2:
        raise ValueError(f"codes must be 2-D (N, M), got shape {arr.shape}")
    if arr.dtype not in (np.uint8, np.uint16, np.int32, np.int64):
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"codes must hold integers, got {arr.dtype}")
        arr = arr.astype(np.int64)
    kk = _count("k", k)
    return _native.topk_codes(lp, np.ascontiguousarray(arr), kk, _threads(num_threads))


def code_stats(codes: Any, codebook_size: int) -> dict[str, Any]:
    """Codebook health of `codes (N, M)` with codes in `[0, codebook_size)`.

    Returns per-codebook `histogram (M, K)`, `utilization` (used codes / K), `perplexity`
    (exp of the code entropy), and over full tuples `unique` (distinct tuples),
    `collision_rate` (1 - unique / N: the share of items that collide with an earlier one) and
    `max_group` (items in the largest group sharing a tuple).
    """
    arr = _ints("codes", codes, 2)
    k = _count("codebook_size", codebook_size)
    hist, unique, largest = _native.code_histograms(arr, k)
    n = arr.shape[0]
    p = hist / max(n, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return {
        "histogram": hist,
        "utilization": (hist > 0).mean(axis=1),
        "perplexity": np.exp(entropy),
        "unique": int(unique),
        "collision_rate": 1.0 - unique / n if n else 0.0,
        "max_group": int(largest),
    }


def default_num_threads() -> int:
    """Threads the engine uses when `num_threads` is None (`MOC_FAST_NUM_THREADS` overrides)."""
    return _native.default_num_threads()


def kernel_name() -> str:
    """The distance kernel every call in this process uses: "avx512", "avx2", "neon" or
    "portable". The fastest this CPU runs, unless `MOC_FAST_KERNEL` forces one (read once, at
    the first call); a `ValueError` if it forces one this CPU cannot run."""
    return _native.kernel_name()


def available_kernels() -> list[str]:
    """The kernels this CPU can run, fastest first: the values `MOC_FAST_KERNEL` accepts."""
    return list(_native.available_kernels())


def within_tie(
    x: Any, codebook: Any, codes_a: Any, codes_b: Any, metric: str = "l2",
    rtol: float = TIE_RTOL,
) -> np.ndarray:  # fmt: skip
    """Per row of `x (N, d)`: whether `codes_a` and `codes_b` name equally near codewords of
    `codebook (K, d)` under the tie contract (equal codes always are).

    Kernels, thread counts and other libraries may pick different codes only where this is
    true: the exact (float64) scores of the two codewords differ by at most `rtol` times
    ‖x‖² + ‖c‖² (L2) or ‖x‖·‖c‖ (`metric="ip"`), with the larger ‖c‖ of the two.
    """
    if metric not in ("l2", "ip"):
        raise ValueError(f"metric must be 'l2' or 'ip', got {metric!r}")
    xs = _floats("x", x, 2).astype(np.float64)
    cb = _floats("codebook", codebook, 2).astype(np.float64)
    a, b = _ints("codes_a", codes_a, 1), _ints("codes_b", codes_b, 1)
    if xs.shape[1] != cb.shape[1]:
        raise ValueError(f"x has d = {xs.shape[1]} but codebook has d = {cb.shape[1]}")
    for name, c in (("codes_a", a), ("codes_b", b)):
        if c.shape != (len(xs),):
            raise ValueError(f"{name} must have shape ({len(xs)},), got {c.shape}")
        if len(c) and (c.min() < 0 or c.max() >= len(cb)):
            raise ValueError(f"{name} must lie in [0, {len(cb)}), got [{c.min()}, {c.max()}]")
    ca, cb_ = cb[a], cb[b]
    na, nb = (ca * ca).sum(1), (cb_ * cb_).sum(1)
    nx = (xs * xs).sum(1)
    if metric == "ip":
        gap = np.abs(((ca - cb_) * xs).sum(1))
        scale = np.sqrt(nx * np.maximum(na, nb))
    else:  # ‖x-a‖² - ‖x-b‖², without the cancelling ‖x‖²
        gap = np.abs(na - nb - 2 * ((ca - cb_) * xs).sum(1))
        scale = nx + np.maximum(na, nb)
    return (a == b) | (gap <= rtol * scale)
