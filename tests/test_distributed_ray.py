"""Encoding on a local Ray cluster gives the IDs of one `encode` call, collisions included."""

from __future__ import annotations

import numpy as np
import pytest

from moc_fast.distributed import RayEncoder, encode_ray
from moc_fast.index import RQKMeansIndexer

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def catalogue(n: int, d: int) -> np.ndarray:
    x = np.random.default_rng().standard_normal((n, d)).astype(np.float32)
    x[n // 2 : n // 2 + 9] = x[3]  # ten identical items: one tuple, ten collision codes
    return x


def test_ray_encoding_over_parquet_shards_equals_one_call(local_ray, tmp_path):
    x = catalogue(3001, 16)
    idx = RQKMeansIndexer(2, 8, collision_code=True).fit(x)
    idx.save(tmp_path / "rq.safetensors")
    (tmp_path / "items").mkdir()
    for i, part in enumerate(np.array_split(x, 4)):
        pq.write_table(pa.table({"embedding": list(part)}), tmp_path / f"items/{i}.parquet")
    ds = ray.data.read_parquet(str(tmp_path / "items"))
    codes = encode_ray(ds, tmp_path / "rq.safetensors", batch_size=256)
    want = idx.encode(x)
    assert np.array_equal(codes, want)
    dup = codes[[3, *range(1500, 1509)]]
    assert len({tuple(r) for r in dup[:, :-1]}) == 1 and len(set(dup[:, -1])) == 10


def test_the_map_batches_class_keeps_other_columns_and_names_a_missing_one(tmp_path):
    x = catalogue(50, 8)
    idx = RQKMeansIndexer(2, 4).fit(x)
    idx.save(tmp_path / "rq.safetensors")
    enc = RayEncoder(tmp_path / "rq.safetensors", column="vec")
    out = enc({"item": np.arange(50), "vec": x})
    assert np.array_equal(out["codes"], idx.encode_raw(x))
    assert np.array_equal(out["item"], np.arange(50)) and "vec" not in out
    rows = np.empty(50, dtype=object)
    rows[:] = list(x)  # a column of per-row arrays, as parquet lists arrive
    assert np.array_equal(enc({"vec": rows})["codes"], idx.encode_raw(x))
    with pytest.raises(ValueError, match="no column 'vec'"):
        enc({"embedding": x})
