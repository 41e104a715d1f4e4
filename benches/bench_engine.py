"""Nearest-codeword search and k-means: moc_fast vs FAISS, torch and numpy in the same run.

    pytest benches/bench_engine.py --benchmark-json=benches/engine.json
    python benches/summarize.py benches/engine.json

Every competitor runs on the same data; the agreement of their codes with ours is checked
(outside the timing) so that no one wins by computing something else.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

import moc_fast as mf

from conftest import N_ROWS

SHAPES = [(32, 256), (64, 1024), (384, 256), (4096, 256)]
THREADS = mf.default_num_threads()
faiss.omp_set_num_threads(THREADS)
torch.set_num_threads(THREADS)


def _moc(x, c):
    return mf.assign(x, c)[0]


def _faiss(x, c):
    index = faiss.IndexFlatL2(c.shape[1])
    index.add(c)
    return index.search(x, 1)[1][:, 0]


def _torch(x, c):
    xt, ct = torch.from_numpy(x), torch.from_numpy(c)
    out = torch.empty(len(x), dtype=torch.int64)
    norms = (ct * ct).sum(1)
    for s in range(0, len(x), 8192):  # chunked: the full N x K matrix would be the slow part
        out[s : s + 8192] = torch.addmm(norms, xt[s : s + 8192], ct.T, alpha=-2).argmin(1)
    return out.numpy()


def _numpy(x, c):
    norms = (c * c).sum(1)
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), 8192):
        out[s : s + 8192] = (norms - 2 * x[s : s + 8192] @ c.T).argmin(1)
    return out


IMPLS = {"moc_fast": _moc, "faiss": _faiss, "torch": _torch, "numpy": _numpy}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize(("d", "k"), SHAPES, ids=[f"D{d}-K{k}" for d, k in SHAPES])
def test_assign(benchmark, gaussian, impl, d, k):
    x, c = gaussian(N_ROWS, d, k)
    benchmark.group = f"assign N={N_ROWS} D={d} K={k}"
    benchmark.extra_info.update(rows=N_ROWS, flops=2.0 * N_ROWS * d * k, threads=THREADS)
    codes = benchmark.pedantic(IMPLS[impl], args=(x, c), rounds=5, warmup_rounds=1)
    agree = float((codes == _moc(x, c)).mean())
    benchmark.extra_info["agreement"] = agree
    assert agree > 0.999  # near-ties may differ in the last float32 bit


KMEANS_SHAPES = [(32, 256), (64, 1024)]


def _inertia(x, centroids):
    return float(mf.assign(x, centroids)[1].astype(np.float64).sum())


@pytest.mark.parametrize("impl", ["moc_fast-random", "moc_fast-k-means++", "faiss"])
@pytest.mark.parametrize(("d", "k"), KMEANS_SHAPES, ids=[f"D{d}-K{k}" for d, k in KMEANS_SHAPES])
def test_kmeans(benchmark, gaussian, impl, d, k):
    x, _ = gaussian(N_ROWS, d, 1)
    benchmark.group = f"kmeans N={N_ROWS} D={d} K={k} iters=25"

    def run():
        if impl == "faiss":
            km = faiss.Kmeans(d, k, niter=25, seed=1, max_points_per_centroid=10**9)
            km.train(x)
            return km.centroids
        init = impl.removeprefix("moc_fast-")
        return mf.kmeans(x, k, iters=25, seed=1, init=init)[0]

    centroids = benchmark.pedantic(run, rounds=2, warmup_rounds=0)
    benchmark.extra_info.update(inertia=_inertia(x, centroids), threads=THREADS)
