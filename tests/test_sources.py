"""Out-of-core indexing: memory maps, parquet folders and iterables give the codes an array in
RAM gives, with memory bounded by blocks rather than N."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from moc_fast.index import KMeansIndexer, MoCIndexer, RQKMeansIndexer, RQVAEIndexer
from moc_fast.index.sources import (
    ArraySource,
    IterableSource,
    as_source,
    seeded_sample,
)

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def clustered(n: int, d: int, seed: int, centres: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32) * 3
    return (c[rng.integers(0, centres, n)] + rng.standard_normal((n, d))).astype(np.float32)


def write_parquet(folder, x: np.ndarray, files: int = 3, column: str = "embedding") -> None:
    folder.mkdir(exist_ok=True)
    for i, part in enumerate(np.array_split(x, files)):
        table = pa.table({"item": np.arange(len(part)), column: list(part)})
        pq.write_table(table, folder / f"part-{i:03d}.parquet", row_group_size=97)


@pytest.fixture
def data(tmp_path):
    x = clustered(1003, 24, seed=int(np.random.default_rng().integers(1 << 30)))
    np.save(tmp_path / "x.npy", x)
    write_parquet(tmp_path / "pq", x)
    return x, tmp_path


def moc(seed: int = 0) -> MoCIndexer:
    return MoCIndexer(3, 16, latent_dim=8, hidden=(32,), seed=seed)


def test_memory_map_trains_the_same_model_as_the_array(data):
    x, tmp = data
    a = moc().fit(x, epochs=2, batch_size=128, progress=False, device="cpu")
    b = moc().fit(str(tmp / "x.npy"), epochs=2, batch_size=128, progress=False, device="cpu")
    mm = np.load(tmp / "x.npy", mmap_mode="r")
    c = moc().fit(mm, epochs=2, batch_size=128, progress=False, device="cpu")
    for other in (b, c):
        for (k, v), w in zip(a.state_dict().items(), other.state_dict().values(), strict=True):
            assert np.array_equal(v.numpy(), w.numpy()), k
    assert a.summary["items"] == b.summary["items"] == len(x)
    assert np.array_equal(a.encode(x), b.encode(mm))


@pytest.mark.parametrize("make", [lambda: KMeansIndexer(16), lambda: RQKMeansIndexer(2, 16), moc])
def test_every_input_kind_encodes_like_the_array(data, make):
    x, tmp = data
    idx = make()
    kwargs = (
        {"epochs": 2, "batch_size": 128, "device": "cpu"} if isinstance(idx, MoCIndexer) else {}
    )
    idx.fit(x, progress=False, **kwargs)
    want = idx.encode(x)
    blocks = np.array_split(x, 7)
    inputs = {
        "path": str(tmp / "x.npy"),
        "mmap": np.load(tmp / "x.npy", mmap_mode="r"),
        "parquet": tmp / "pq",
        "one parquet": tmp / "pq" / "part-001.parquet",
        "list": blocks,
        "generator": (b for b in blocks),
        "function": lambda: iter(blocks),
    }
    for name, inp in inputs.items():
        got = idx.encode(inp)
        expect = want[335:669] if name == "one parquet" else want
        assert np.array_equal(got, expect), name


def test_streamed_training_from_parquet_is_seeded_and_learns(data):
    x, tmp = data
    a = moc(seed=3).fit(tmp / "pq", epochs=3, batch_size=100, progress=False, device="cpu")
    b = moc(seed=3).fit(tmp / "pq", epochs=3, batch_size=100, progress=False, device="cpu")
    assert np.array_equal(a.encode(x), b.encode(x))
    assert a.summary["items"] == len(x)
    # a partial shuffle learns about as well as the full one in RAM
    ram = moc(seed=3).fit(x, epochs=3, batch_size=100, progress=False, device="cpu")
    sse = [float(((m.reconstruct(x) - x) ** 2).sum()) for m in (a, ram)]
    assert sse[0] < 1.15 * sse[1], sse
    # several epochs from a function, one from a one-shot generator, never two from it
    blocks = np.array_split(x, 5)
    moc().fit(lambda: iter(blocks), epochs=2, batch_size=128, progress=False, device="cpu")
    moc().fit((b for b in blocks), epochs=1, batch_size=128, progress=False, device="cpu")
    with pytest.raises(ValueError, match="one-shot iterator"):
        moc().fit((b for b in blocks), epochs=2, batch_size=128, progress=False, device="cpu")


def test_rqvae_streams_too(data):
    x, tmp = data
    idx = RQVAEIndexer(2, 16, latent_dim=8, hidden=(32,), seed=1)
    idx.fit(tmp / "pq", epochs=2, batch_size=128, progress=False, device="cpu")
    codes = idx.encode(str(tmp / "x.npy"))
    assert codes.shape == (len(x), 3)
    assert len({tuple(r) for r in codes}) == len(x)  # the collision code makes them unique


def test_out_of_core_kmeans_on_the_whole_sample_equals_in_memory(data):
    x, tmp = data
    whole = KMeansIndexer(16, seed=5).fit(x)
    streamed = KMeansIndexer(16, seed=5).fit(str(tmp / "x.npy"), sample_size=len(x), passes=0)
    assert np.array_equal(whole.codebooks_, streamed.codebooks_)
    assert streamed.summary["sample_size"] == len(x)


def lloyd_step(y: np.ndarray, c: np.ndarray) -> np.ndarray:
    """One Lloyd step by hand: assign to the nearest centroid, move each to its mean (an
    empty cluster keeps its centroid)."""
    lab = ((y[:, None] - c[None]) ** 2).sum(-1).argmin(1)
    return np.stack([y[lab == k].mean(0) if (lab == k).any() else c[k] for k in range(len(c))])


@pytest.mark.parametrize("cls", [KMeansIndexer, RQKMeansIndexer])
def test_a_streamed_lloyd_pass_is_one_lloyd_step_over_all_rows(data, cls):
    x, tmp = data
    args = (16,) if cls is KMeansIndexer else (2, 16)
    base = cls(*args, seed=1).fit(tmp / "pq", sample_size=300, passes=0)
    step = cls(*args, seed=1).fit(tmp / "pq", sample_size=300, passes=1)
    y, want = x.astype(np.float64), []
    for level, c in enumerate(base.codebooks_):  # level by level, on the updated residuals
        want.append(lloyd_step(y, c.astype(np.float64)))
        y = y - want[level][((y[:, None] - want[level][None]) ** 2).sum(-1).argmin(1)]
    np.testing.assert_allclose(step.codebooks_, np.stack(want), rtol=1e-4, atol=1e-4)
    more = cls(*args, seed=1).fit(tmp / "pq", sample_size=300, passes=3)

    def sse(idx) -> float:
        return float(((idx.reconstruct(x).astype(np.float64) - x) ** 2).sum())

    if cls is KMeansIndexer:  # Lloyd steps never raise the k-means objective
        assert sse(more) <= sse(base) * (1 + 1e-6)
    assert more.summary["items"] == len(x) and more.summary["passes"] == 3


def test_streamed_pca_matches_in_memory_pca(data):
    x, tmp = data
    a = KMeansIndexer(8, pca_dim=5).fit(x)
    b = KMeansIndexer(8, pca_dim=5).fit(str(tmp / "x.npy"), sample_size=200)
    np.testing.assert_allclose(a.proj.mean, b.proj.mean, rtol=1e-6, atol=1e-7)
    dots = np.abs((a.proj.components * b.proj.components).sum(1))
    np.testing.assert_allclose(dots, 1.0, atol=1e-6)  # the same axes, up to sign


def test_seeded_sample_is_uniform_and_the_same_either_way(data):
    x, tmp = data
    by_take = seeded_sample(ArraySource(np.load(tmp / "x.npy", mmap_mode="r")), 200, seed=4)
    streamed = seeded_sample(as_source(tmp / "pq"), 200, seed=4)
    for s in (by_take, streamed):
        assert s.shape == (200, x.shape[1])
        assert len({r.tobytes() for r in s}) == 200
        assert {r.tobytes() for r in s} <= {r.tobytes() for r in x}
    assert np.array_equal(streamed, seeded_sample(as_source(tmp / "pq"), 200, seed=4))
    assert np.array_equal(seeded_sample(as_source(tmp / "pq"), 5000, seed=0), x)
    # uniform: the sample's mean row index is near the middle
    rows = {r.tobytes(): i for i, r in enumerate(x)}
    picked = np.array([rows[r.tobytes()] for r in streamed])
    assert abs(picked.mean() - len(x) / 2) < 4 * len(x) / np.sqrt(12 * 200)


def test_bad_blocks_name_the_global_row(data, tmp_path):
    x, tmp = data
    idx = KMeansIndexer(8).fit(x)
    bad = x.copy()
    bad[700, 3] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match="row 700 holds NaN"):
        idx.encode(str(tmp_path / "bad.npy"))
    with pytest.raises(ValueError, match="row 700 holds NaN"):
        idx.encode(np.array_split(bad, 3))
    write_parquet(tmp_path / "badpq", bad)
    with pytest.raises(ValueError, match="row 700 holds NaN"):
        idx.encode(tmp_path / "badpq")
    with pytest.raises(ValueError, match="built for D = 24"):
        idx.encode([x[:, :10]])
    with pytest.raises(ValueError, match="no column 'vec'"):
        as_source(tmp / "pq", column="vec")
    ragged = pa.table({"embedding": [[1.0, 2.0], [1.0, 2.0, 3.0]]})
    (tmp_path / "ragged").mkdir()
    pq.write_table(ragged, tmp_path / "ragged" / "a.parquet")
    with pytest.raises(ValueError, match="unequal length at row 1"):
        list(as_source(tmp_path / "ragged").blocks())
    with pytest.raises(ValueError, match="expected a .npy file"):
        as_source(tmp_path / "x.csv")
    with pytest.raises(TypeError, match="must be an array"):
        as_source(42)
    with pytest.raises(ValueError, match="holds no items"):
        moc().fit(IterableSource([]), epochs=1, progress=False, device="cpu")


def test_encoding_a_memory_map_keeps_resident_memory_bounded(tmp_path):
    """A 160 MB memory map encoded block by block: resident memory grows by far less than the
    file (each block's pages are unmapped once read), where a plain read would map it all."""
    x = np.random.default_rng(0).standard_normal((312_500, 128), dtype=np.float32)
    np.save(tmp_path / "big.npy", x)
    KMeansIndexer(32, iters=3).fit(x[:5000]).save(tmp_path / "km.safetensors")
    del x
    script = textwrap.dedent(f"""
        import numpy as np
        from moc_fast.index import load_indexer

        def rss_mb():
            return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

        idx = load_indexer({str(tmp_path / "km.safetensors")!r})
        base = rss_mb()
        peak = 0.0
        from moc_fast.index.sources import as_source
        for block in as_source({str(tmp_path / "big.npy")!r}).blocks():
            idx.encode_raw(block)
            peak = max(peak, rss_mb() - base)
        mm = np.load({str(tmp_path / "big.npy")!r}, mmap_mode="r")
        plain = float(sum(float(mm[s : s + 65536].sum()) for s in range(0, len(mm), 65536)))
        print(peak, rss_mb() - base)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    streamed, plain = map(float, out.stdout.split())
    assert streamed < 80, f"encoding grew resident memory by {streamed:.0f} MB"
    assert plain > 120  # the comparison is meaningful: mapping without release does grow


def test_cli_indexes_and_encodes_parquet_and_memory_maps(data, capsys):
    from moc_fast.cli import main
    from moc_fast.index import load_indexer

    x, tmp = data
    km = tmp / "km.safetensors"
    assert main(["index", "-q", "--embeddings", str(tmp / "pq"), "--method", "rq-kmeans",
                 "--scale", "2", "--codebook-size", "16", "--out", str(km)]) == 0  # fmt: skip
    for inp in (tmp / "pq", tmp / "x.npy"):
        out = tmp / f"codes-{inp.name}.npy"
        assert main(["encode", "-q", "--indexer", str(km), "--input", str(inp),
                     "--out", str(out)]) == 0  # fmt: skip
        assert np.array_equal(np.load(out), load_indexer(km).encode(x))
    assert load_indexer(km).summary["items"] == len(x)
    assert main(["encode", "-q", "--indexer", str(km), "--input", str(tmp / "missing.npy"),
                 "--out", str(tmp / "c.npy")]) != 0  # fmt: skip
    assert "--input" in capsys.readouterr().err


def _write_npy(path, n: int) -> None:
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, 384))
    rng = np.random.default_rng(0)
    for s in range(0, n, 50_000):
        mm[s : s + 50_000] = rng.standard_normal((min(50_000, n - s), 384), dtype=np.float32)
    mm.flush()
    del mm


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="needs posix_fadvise (Linux)")
@pytest.mark.parametrize("how", ["path", "mmap"])
def test_out_of_core_fit_and_encode_do_not_keep_the_file_resident(tmp_path, how):
    # Fresh processes, files dropped from the page cache. The file is read with pread, never
    # through a mapping (whose pages some kernels kept resident: 3.9 GB for a 3.1 GB file), so
    # none of its pages is ever mapped, and 4x the rows (+230 MB of file) add little to the peak.
    import json

    from conftest import PYTHON

    peaks = {}
    for n in (50_000, 200_000):
        _write_npy(tmp_path / f"x{n}.npy", n)
        run = subprocess.run([*PYTHON, str(Path(__file__).parent / "ooc_worker.py"),
                              str(tmp_path / f"x{n}.npy"), how],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        out = json.loads(run.stdout.strip().splitlines()[-1])
        assert out["rows"] == n
        assert out["mapped"] == 0  # no page of the file ever resident through a mapping
        peaks[n] = out["peak"]
        (tmp_path / f"x{n}.npy").unlink()
    grown = peaks[200_000] - peaks[50_000]
    assert grown < 0.25 * 150_000 * 384 * 4, f"peak RSS grew {grown / 1e6:.0f} MB: {peaks}"


@pytest.mark.parametrize("kind", ["array", "iterable"])
def test_an_interrupted_indexer_fit_resumes_from_its_checkpoint_exactly(data, tmp_path, kind):
    # Gathered (array) and streamed (iterable) shuffles, k-means init, dead-code restarts and
    # Adam all continue from the file: 1 epoch, "killed", then 3 == 3 uninterrupted epochs.
    x, _ = data
    X = x if kind == "array" else [x[s : s + 100] for s in range(0, len(x), 100)]
    make = lambda: MoCIndexer(2, 16, latent_dim=8, hidden=(32,), restart_after=2, seed=0)  # noqa: E731
    kw = dict(batch_size=64, progress=False, device="cpu")
    whole = make().fit(X, epochs=3, checkpoint=tmp_path / "a.ckpt", **kw)
    make().fit(X, epochs=1, checkpoint=tmp_path / "b.ckpt", **kw)  # the run that was cut
    resumed = make().fit(X, epochs=3, checkpoint=tmp_path / "b.ckpt", **kw)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert resumed.summary["items"] == whole.summary["items"] == len(x)
    assert resumed.summary["final_recon_mse"] == whole.summary["final_recon_mse"]
    assert np.array_equal(resumed.encode(x), whole.encode(x))


def test_take_reads_any_rows_of_a_file_including_none(data):
    x, tmp = data
    src = as_source(str(tmp / "x.npy"))
    assert src.file is not None  # read with pread, not through the mapping
    for idx in ([], [5], [1002, 0, 7, 8, 9, 3], list(range(1003))[::-1]):
        rows = np.array(idx, dtype=np.int64)
        assert np.array_equal(src.take(rows), x[rows].reshape(len(rows), x.shape[1]))
    view = np.load(tmp / "x.npy", mmap_mode="r")[100:200]  # a row slice of a memory map
    assert np.array_equal(as_source(view).take(np.array([0, 99])), x[[100, 199]])
    private = np.load(tmp / "x.npy", mmap_mode="c")  # copy-on-write: changes not in the file
    private[3] = 7.0
    src = as_source(private)
    assert src.file is None and (src.take(np.array([3])) == 7.0).all()
    assert (private[3] == 7.0).all()  # reading did not discard the change (no MADV_DONTNEED)


# ---------------------------------------------------------------- one part per rank


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_parquet_parts_are_contiguous_disjoint_and_cover_every_row(data, world):
    x, tmp = data  # 3 files of 334-335 rows in row groups of 97: parts cut through groups
    source = as_source(tmp / "pq")
    parts = [source.shard(r, world) for r in range(world)]
    got = [np.concatenate(list(p.blocks(rows=50))) for p in parts]
    assert [len(g) for g in got] == [p.num_rows for p in parts]
    assert max(p.num_rows for p in parts) - min(p.num_rows for p in parts) <= 1
    np.testing.assert_array_equal(np.concatenate(got), x)  # rank order is row order


def test_a_parquet_part_reads_about_its_share_of_the_bytes(tmp_path):
    io = Path("/proc/self/io")
    if not io.exists():
        pytest.skip("needs Linux's per-process I/O counters (/proc/self/io)")
    x = clustered(40_000, 32, seed=1)
    write_parquet(tmp_path / "big", x, files=2)  # 2 files of 20,000 rows, groups of 97

    def bytes_read(source) -> int:
        before = int(io.read_text().split("rchar:")[1].split()[0])
        rows = sum(len(b) for b in source.blocks())
        assert rows == source.num_rows
        return int(io.read_text().split("rchar:")[1].split()[0]) - before

    source = as_source(tmp_path / "big")
    alone = bytes_read(source)
    for rank in (0, 1):
        assert bytes_read(source.shard(rank, 2)) < 0.6 * alone


def test_iterable_parts_strided_or_made_by_the_function(data):
    x, _ = data
    blocks = np.array_split(x, 7)  # uneven blocks: the stride runs across their edges
    strided = [np.concatenate(list(IterableSource(blocks).shard(r, 3).blocks())) for r in range(3)]
    for r in range(3):
        np.testing.assert_array_equal(strided[r], x[r::3])

    calls = []

    def parts(rank: int = 0, world: int = 1):  # makes its own part: read nothing else
        calls.append((rank, world))
        return iter(np.array_split(x, world)[rank : rank + 1])

    own = [np.concatenate(list(IterableSource(parts).shard(r, 2).blocks())) for r in range(2)]
    np.testing.assert_array_equal(np.concatenate(own), x)
    assert calls == [(0, 2), (1, 2)]

