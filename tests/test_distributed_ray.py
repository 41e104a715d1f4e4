"""Encoding on a local Ray cluster gives the IDs of one `encode` call, collisions included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import moc_fast as mf
from moc_fast.distributed import RayEncoder, collision_ranks, default_concurrency, encode_ray
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


def test_encoding_with_an_indexer_object_and_few_partitions_equals_one_call(local_ray):
    # The indexer travels through the object store (no file); 3 partitions hold many groups.
    x = catalogue(4000, 8)
    x[100:400] = x[50]  # a group of 301 equal items across many blocks
    idx = RQKMeansIndexer(2, 4, collision_code=True).fit(x)
    ds = ray.data.from_numpy(x).rename_columns({"data": "embedding"})
    codes = encode_ray(ds, idx, batch_size=300, partitions=3)
    assert np.array_equal(codes, idx.encode(x))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2)), min_size=0, max_size=60))
def test_collision_ranks_match_the_engines_one_pass(pairs):
    codes = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    want = mf.resolve_collisions(codes)[:, -1] if len(codes) else np.zeros(0, np.int64)
    assert np.array_equal(collision_ranks(codes, np.arange(len(codes))), want)


def test_actors_run_the_engine_on_as_many_threads_as_cpus_they_ask(tmp_path, monkeypatch):
    monkeypatch.setenv("MOC_FAST_NUM_THREADS", "7")  # restored after the test
    x = catalogue(50, 8)
    RayEncoder(RQKMeansIndexer(2, 4).fit(x), num_threads=3)
    assert mf.default_num_threads() == 3
    assert default_concurrency(2, 1) == 1 and default_concurrency(64, 1) == 63
    assert default_concurrency(64, 4) == 15  # no cap: a big cluster gets big pools
