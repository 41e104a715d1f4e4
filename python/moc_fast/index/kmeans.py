"""Training-free indexers: k-means and residual k-means on raw or PCA-reduced embeddings."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from moc_fast import engine
from moc_fast.index.base import Indexer, as_embeddings, encode_blocks
from moc_fast.index.sources import EmbeddingSource, as_source, seeded_sample


class _Projection:
    """Optional PCA to `pca_dim` dimensions (centred, top eigenvectors of the covariance)."""

    def __init__(self, pca_dim: int | None) -> None:
        self.pca_dim = pca_dim
        self.mean: np.ndarray | None = None
        self.components: np.ndarray | None = None  # (pca_dim, D)

    def fit(self, x: np.ndarray) -> None:
        if self.pca_dim is None:
            return
        if not 1 <= self.pca_dim <= x.shape[1]:
            raise ValueError(f"pca_dim must be in [1, D = {x.shape[1]}], got {self.pca_dim}")
        x64 = x.astype(np.float64)
        self.mean = x64.mean(0)
        cov = np.cov(x64 - self.mean, rowvar=False)
        _, vecs = np.linalg.eigh(np.atleast_2d(cov))
        self.components = vecs[:, ::-1][:, : self.pca_dim].T.copy()

    def fit_stream(self, source: EmbeddingSource) -> None:
        """The same PCA from one pass of float64 sums (mean and X^T X), memory O(D^2)."""
        if self.pca_dim is None:
            return
        n, total, gram = 0, None, None
        for block in source.blocks():
            b = block.astype(np.float64)
            total = b.sum(0) if total is None else total + b.sum(0)
            gram = b.T @ b if gram is None else gram + b.T @ b
            n += len(b)
        if n < 2:
            raise ValueError(f"PCA needs at least 2 items, got {n}")
        if not 1 <= self.pca_dim <= len(total):
            raise ValueError(f"pca_dim must be in [1, D = {len(total)}], got {self.pca_dim}")
        self.mean = total / n
        cov = (gram - n * np.outer(self.mean, self.mean)) / (n - 1)
        _, vecs = np.linalg.eigh(cov)
        self.components = vecs[:, ::-1][:, : self.pca_dim].T.copy()

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.components is None:
            return x
        return ((x - self.mean) @ self.components.T).astype(np.float32)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        if self.components is None:
            return y
        return (y @ self.components + self.mean).astype(np.float32)


class _TrainingFree(Indexer):
    def __init__(self, codebook_size: int, pca_dim: int | None, iters: int, seed: int) -> None:
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
        self.codebook_size, self.iters, self.seed = codebook_size, iters, seed
        self.proj = _Projection(pca_dim)
        self.input_dim: int | None = None
        self.codebooks_: np.ndarray | None = None  # (L, K, d)
        self.summary: dict[str, Any] = {}

    @property
    def fitted(self) -> bool:
        return self.codebooks_ is not None

    def fit(
        self,
        X: Any,
        epochs: int | None = None,
        batch_size: int | None = None,
        device: Any = None,
        progress: bool = True,
        sample_size: int | None = None,
        passes: int = 1,
    ) -> _TrainingFree:
        """Cluster `X (N, D)`. `epochs`, when given, sets the Lloyd iterations; `batch_size`
        and `device` do not apply (the Rust engine uses all CPU cores).

        An array in RAM is clustered whole. Out-of-core input (a memory-mapped `.npy`, parquet,
        an iterable of batches; see `moc_fast.index.sources`) is clustered on a seeded sample
        of `sample_size` rows (default `max(65,536, 64·K)`), then refined by `passes` streamed
        Lloyd passes over every row (per level), so memory is bounded by the sample.
        """
        iters = self.iters if epochs is None else int(epochs)
        start = time.perf_counter()
        source = as_source(X)
        mem = source.in_memory()
        if mem is not None:
            x = as_embeddings(mem)
            self.input_dim, items = x.shape[1], len(x)
            self.proj.fit(x)
            self.codebooks_, inertia = self._cluster(self.proj.forward(x), iters)
        else:
            if passes < 0:
                raise ValueError(f"passes must be >= 0, got {passes}")
            size = sample_size or max(65_536, 64 * self.codebook_size)
            sample = seeded_sample(source, size, self.seed)
            self.input_dim = sample.shape[1]
            self.proj.fit_stream(source)
            self.codebooks_, inertia = self._cluster(self.proj.forward(sample), iters)
            for _ in range(passes):
                inertia = self._refine(source)
            items = source.num_rows
        self.summary = {
            "items": items,
            "iters": iters,
            "inertia": float(inertia),
            "seconds": round(time.perf_counter() - start, 3),
            "device": "cpu",
        }
        if mem is None:
            self.summary.update(sample_size=size, passes=passes)
        return self

    def _refine(self, source: EmbeddingSource) -> float:
        """One streamed Lloyd step per level (residuals of the earlier levels); empty clusters
        keep their centroid. Returns the sum of squared residuals after the last level."""
        cbs = self.codebooks_
        k, d = cbs.shape[1], cbs.shape[2]
        inertia = 0.0
        for level in range(len(cbs)):
            sums, counts, inertia = np.zeros((k, d)), np.zeros(k, dtype=np.int64), 0.0
            for block in source.blocks():
                y = self.proj.forward(block)
                if level:
                    y = engine.assign_residual(y, cbs[:level])[1]
                codes, dist = engine.assign(y, cbs[level])
                order = np.argsort(codes, kind="stable")
                present, starts = np.unique(codes[order], return_index=True)
                sums[present] += np.add.reduceat(y[order].astype(np.float64), starts)
                counts += np.bincount(codes, minlength=k)
                inertia += float(dist.astype(np.float64).sum())
            filled = counts > 0
            cbs[level, filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
        return inertia

    def _cluster(self, y: np.ndarray, iters: int) -> tuple[np.ndarray, float]:
        raise NotImplementedError

    def encode_raw(self, X: Any) -> np.ndarray:
        self._require_fitted()
        return encode_blocks(
            X, self.input_dim, self.num_codes,
            lambda block: engine.assign_residual(self.proj.forward(block), self.codebooks_)[0],
        )  # fmt: skip

    def reconstruct(self, X: Any) -> np.ndarray:
        codes = self.encode_raw(X)
        y = sum(self.codebooks_[lv][codes[:, lv]] for lv in range(codes.shape[1]))
        return self.proj.inverse(np.asarray(y, dtype=np.float32))

    def state(self) -> dict[str, np.ndarray]:
        out = {"codebooks": self.codebooks_}
        if self.proj.components is not None:
            out.update(pca_mean=self.proj.mean, pca_components=self.proj.components)
        return out

    def load_state(self, state: dict[str, np.ndarray], input_dim: int) -> None:
        """Restore from `state`, which must have the shapes this config implies."""
        dim = self.proj.pca_dim or input_dim
        want = {"codebooks": (self.num_codes, self.codebook_size, dim)}
        if self.proj.pca_dim is not None:
            want.update(pca_mean=(input_dim,), pca_components=(self.proj.pca_dim, input_dim))
        got = {k: tuple(v.shape) for k, v in state.items()}
        if got != want:
            raise ValueError(f"the config implies tensors {want}, the state holds {got}")
        self.codebooks_ = np.ascontiguousarray(state["codebooks"], dtype=np.float32)
        if "pca_components" in state:
            self.proj.mean, self.proj.components = state["pca_mean"], state["pca_components"]
        self.input_dim = input_dim


class KMeansIndexer(_TrainingFree):
    """One code per item: k-means (Rust engine) of the raw or PCA-reduced embeddings."""

    def __init__(
        self, codebook_size: int = 256, pca_dim: int | None = None, iters: int = 25, seed: int = 0
    ) -> None:
        super().__init__(codebook_size, pca_dim, iters, seed)
        self.config = dict(codebook_size=codebook_size, pca_dim=pca_dim, iters=iters, seed=seed)

    @property
    def num_codes(self) -> int:
        return 1

    def _cluster(self, y: np.ndarray, iters: int) -> tuple[np.ndarray, float]:
        centroids, _, inertia = engine.kmeans(y, self.codebook_size, iters=iters, seed=self.seed)
        return centroids[None], inertia


class RQKMeansIndexer(_TrainingFree):
    """`levels` codes per item: residual k-means (Rust engine); optionally with the collision
    code appended, as RQ-VAE does."""

    def __init__(
        self,
        levels: int = 3,
        codebook_size: int = 256,
        pca_dim: int | None = None,
        iters: int = 25,
        seed: int = 0,
        collision_code: bool = False,
    ) -> None:
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        super().__init__(codebook_size, pca_dim, iters, seed)
        self.levels = levels
        self.appends_collision_code = collision_code
        self.config = dict(
            levels=levels,
            codebook_size=codebook_size,
            pca_dim=pca_dim,
            iters=iters,
            seed=seed,
            collision_code=collision_code,
        )

    @property
    def num_codes(self) -> int:
        return self.levels

    def _cluster(self, y: np.ndarray, iters: int) -> tuple[np.ndarray, float]:
        codebooks, _, inertia = engine.rq_kmeans(
            y, self.levels, self.codebook_size, iters=iters, seed=self.seed
        )
        return codebooks, inertia
