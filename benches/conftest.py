"""Shared fixtures for the benchmarks: seeded data, generated once per session."""

from __future__ import annotations

import numpy as np
import pytest

N_ROWS = 100_000


@pytest.fixture(scope="session")
def gaussian():
    """`make(n, d, k) -> (x, codebook)`: standard normal float32, cached by shape."""
    cache: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}

    def make(n: int, d: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        if (n, d, k) not in cache:
            rng = np.random.default_rng(n + d + k)
            cache[(n, d, k)] = (
                rng.standard_normal((n, d), dtype=np.float32),
                rng.standard_normal((k, d), dtype=np.float32),
            )
        return cache[(n, d, k)]

    return make
