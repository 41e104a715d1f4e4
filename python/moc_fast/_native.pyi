"""Stubs of the Rust extension; the validated public API is `moc_fast.engine`."""

from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

def assign(
    x: npt.NDArray[np.float32],
    codebook: npt.NDArray[np.float32],
    metric: str = "l2",
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
def assign_multi(
    x: npt.NDArray[np.float32],
    codebooks: npt.NDArray[np.float32],
    metric: str = "l2",
    num_threads: int = 0,
) -> npt.NDArray[np.int64]: ...
def assign_residual(
    x: npt.NDArray[np.float32], codebooks: npt.NDArray[np.float32], num_threads: int = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
def kmeans(
    x: npt.NDArray[np.float32],
    k: int,
    iters: int = 25,
    seed: int = 0,
    init: str = "k-means++",
    metric: str = "l2",
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], float, int]: ...
def kmeans_from(
    x: npt.NDArray[np.float32],
    centroids: npt.NDArray[np.float32],
    iters: int = 25,
    metric: str = "l2",
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], float, int]: ...
def rq_kmeans(
    x: npt.NDArray[np.float32],
    levels: int,
    k: int,
    iters: int = 25,
    seed: int = 0,
    init: str = "k-means++",
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], float]: ...
def pack_codes(codes: npt.NDArray[np.int64], bits: int) -> npt.NDArray[np.uint64]: ...
def unpack_codes(ids: npt.NDArray[np.uint64], m: int, bits: int) -> npt.NDArray[np.int64]: ...
def topk_codes(
    logp: npt.NDArray[np.float32], codes: npt.NDArray[Any], k: int, num_threads: int = ...
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
def resolve_collisions(codes: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], int]: ...
def code_histograms(
    codes: npt.NDArray[np.int64], codebook_size: int
) -> tuple[npt.NDArray[np.int64], int, int]: ...
def default_num_threads() -> int: ...
def kernel_name() -> str: ...
def available_kernels() -> list[str]: ...
