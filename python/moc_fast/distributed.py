"""Encoding a catalogue on Ray: workers run the Rust engine on their blocks, the driver makes
the one global collision pass, so the IDs equal a single `indexer.encode` over all items."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from moc_fast import engine

__all__ = ["RayEncoder", "encode_ray"]


class RayEncoder:
    """A callable class for `ray.data.Dataset.map_batches`: loads the indexer once per worker
    and adds a `codes` column `(B, num_codes)` (no collision suffix: that needs every item)."""

    def __init__(self, indexer_path: str | os.PathLike, column: str = "embedding") -> None:
        from moc_fast.index import load_indexer

        self.indexer = load_indexer(indexer_path)
        self.column = column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.column not in batch:
            raise ValueError(
                f"the dataset has no column {self.column!r} (columns: {sorted(batch)}); "
                "pass column= to name the embedding column"
            )
        x = np.asarray(batch[self.column])
        if x.dtype == object:  # a column of per-row lists or arrays
            x = np.stack([np.asarray(r, dtype=np.float32) for r in x]) if len(x) else x
        out = {k: v for k, v in batch.items() if k != self.column}
        out["codes"] = self.indexer.encode_raw(x.reshape(len(x), -1) if len(x) else x)
        return out


def encode_ray(
    dataset: Any,
    indexer_path: str | os.PathLike,
    column: str = "embedding",
    batch_size: int = 65_536,
    concurrency: int | None = None,
    num_cpus: float = 1,
) -> np.ndarray:
    """Semantic IDs of every row of the Ray dataset `dataset` (an embedding `column` of
    `(D,)` float rows), in the dataset's order: `(N, num_codes[+1])` int64, identical to
    `load_indexer(indexer_path).encode(all embeddings)`.

    Blocks are encoded by `concurrency` actors of `num_cpus` CPUs each (default: as many as
    fit in the cluster's CPUs less one, which stays free for reading blocks; at least one, at
    most 8); the collision suffix, where the indexer appends one, is computed afterwards in one pass
    over all codes (Rust), as it ranks each item among earlier items with the same tuple.
    """
    import ray

    from moc_fast.index import load_indexer

    appends = load_indexer(indexer_path).appends_collision_code
    if concurrency is None:
        cpus = ray.cluster_resources().get("CPU", 1)
        concurrency = max(1, min(8, int((cpus - 1) // num_cpus)))
    encoded = dataset.map_batches(
        RayEncoder,
        fn_constructor_args=(str(indexer_path), column),
        batch_format="numpy",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus,
    ).select_columns(["codes"])
    # A dataset carries a copy of the DataContext it was made under: order is set on this one.
    encoded.context.execution_options.preserve_order = True  # codes in the input's order
    parts = [b["codes"] for b in encoded.iter_batches(batch_format="numpy", batch_size=None)]
    codes = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.int64)
    return engine.resolve_collisions(codes) if appends and len(codes) else codes
