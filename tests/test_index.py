"""Indexers: quantiser maths, fitting on real item texts, encode paths, save/load, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import moc_fast as mf
from moc_fast.index import VectorQuantizer, load_indexer
from moc_fast.metrics import format_report, index_report, nmi

from conftest import real_dataset


@pytest.fixture(scope="module", params=["synthetic", "beauty"])
def beauty(request) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings of 2,000 item texts: the first Beauty titles (real data,
    skipped where ../shared/data is absent) and the synthetic catalogue's templated texts."""
    from moc_fast.data import embed_texts, read_item_text
    from moc_fast.data.synthetic import synthetic_catalog

    if request.param == "synthetic":
        texts = synthetic_catalog(num_items=2000).item_text()
    else:
        _, texts = read_item_text(real_dataset("beauty") / "item_text.txt", limit=2000)
    return embed_texts(texts, progress=False)


def _variance(x: np.ndarray) -> float:
    return float(((x - x.mean(0)) ** 2).mean())


def test_straight_through_gradient_and_losses_by_hand():
    vq = VectorQuantizer(codebook_size=3, dim=2, beta=0.25, kmeans_init=False, restart_after=0)
    vq.codebook.data = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.0]])
    z = torch.tensor([[0.9, 1.2], [-1.5, 0.1], [0.1, -0.1]], requires_grad=True)
    out = vq(z)
    assert out.codes.tolist() == [1, 2, 0]
    q = vq.codebook.detach()[[1, 2, 0]]
    assert torch.equal(out.quantized.detach(), q)
    mse = ((z.detach() - q) ** 2).mean()
    assert out.loss.item() == pytest.approx((1 + 0.25) * mse.item(), rel=1e-6)
    out.quantized.sum().backward(retain_graph=True)
    assert torch.equal(z.grad, torch.ones_like(z))  # straight through
    z.grad = None
    out.loss.backward()
    n = z.numel()
    np.testing.assert_allclose(z.grad, 0.25 * 2 * (z.detach() - q) / n, rtol=1e-6)
    want_cb = torch.zeros(3, 2)
    want_cb[[1, 2, 0]] = 2 * (q - z.detach()) / n
    np.testing.assert_allclose(vq.codebook.grad, want_cb, rtol=1e-6)


def test_kmeans_initialisation_and_its_minimum_batch():
    x = torch.randn(500, 4)
    vq = VectorQuantizer(codebook_size=8, dim=4)
    vq.train()
    vq(x)
    assert bool(vq.initialized)
    codes = vq.assign_torch(x)
    assert len(codes.unique()) == 8  # k-means centroids: every code has members
    with pytest.raises(ValueError, match="at least codebook_size = 8"):
        VectorQuantizer(codebook_size=8, dim=4).train()(torch.randn(5, 4))


def test_dead_codes_are_restarted_from_batch_latents():
    vq = VectorQuantizer(codebook_size=4, dim=2, kmeans_init=False, restart_after=2)
    vq.codebook.data = torch.tensor([[0.0, 0.0], [100.0, 100.0], [0.1, 0.0], [0.0, 0.1]])
    x = torch.randn(64, 2) * 0.1
    vq.train()
    vq(x)
    vq(x)  # code 1 has now been idle for two steps
    assert vq.codebook[1].abs().max() < 1.0
    assert any(torch.equal(vq.codebook[1], row) for row in x)


def test_ema_moves_codewords_towards_their_members():
    vq = VectorQuantizer(
        codebook_size=2, dim=1, ema=True, decay=0.5, kmeans_init=False, restart_after=0
    )
    vq.codebook.data = torch.tensor([[0.0], [10.0]])
    vq.ema_sum.copy_(vq.codebook.data)
    vq.train()
    vq(torch.tensor([[1.0], [1.0], [9.0]]))
    assert 0.0 < vq.codebook[0].item() < 1.0
    assert vq.codebook[1].item() == pytest.approx(9.5, abs=0.01)
    assert not vq.codebook.requires_grad


@torch.no_grad()
def _assert_moc_codes_within_tie(idx, X: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Two encodings of X by one MoC indexer differ only on near-ties of their codebook."""
    idx.eval()
    z = idx.latents(torch.from_numpy(X))
    for j, q in enumerate(idx.quantizers):
        zj = q._prepare(idx._latent_of(z, j)).numpy()
        metric = "ip" if q.metric == "cosine" else "l2"
        assert mf.within_tie(zj, q.normalized_codebook().numpy(), a[:, j], b[:, j], metric).all()


@torch.no_grad()
def _assert_residual_codes_within_tie(idx, X: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Two residual encodings agree until a level where they take near-tied codewords; past
    that level the residuals differ, so the later codes may too."""
    idx.eval()
    res = idx.latents(torch.from_numpy(X)).numpy()
    agreed = np.ones(len(X), dtype=bool)  # rows whose codes agreed on every earlier level
    for level, cb in enumerate(idx.codebooks().numpy()):
        assert mf.within_tie(res[agreed], cb, a[agreed, level], b[agreed, level]).all()
        agreed &= a[:, level] == b[:, level]
        res = res - cb[a[:, level]]


@pytest.mark.parametrize("latent", ["per_codebook", "shared"])
def test_moc_fits_real_items_beats_the_mean_and_encode_paths_agree_up_to_ties(beauty, latent):
    idx = mf.MoCIndexer(num_codebooks=3, codebook_size=64, latent_dim=16, latent=latent, seed=1)
    idx.fit(beauty, epochs=15, batch_size=128, progress=False)
    assert idx.reconstruct(beauty[:500]).shape == (500, 384)
    mse = float(((idx.reconstruct(beauty) - beauty) ** 2).mean())
    assert mse < 0.9 * _variance(beauty)
    rust = idx.encode_raw(beauty, backend="engine")
    torch_codes = idx.encode_raw(beauty, backend="torch")
    assert rust.shape == (2000, 3) and rust.dtype == np.int64
    assert (rust == torch_codes).mean() > 0.99  # the tie contract allows differences on ties only
    _assert_moc_codes_within_tie(idx, beauty, rust, torch_codes)
    np.testing.assert_array_equal(idx.encode(beauty), rust)  # MoC appends no collision code


def test_rqvae_encode_appends_a_collision_code_that_makes_ids_unique(beauty):
    idx = mf.RQVAEIndexer(levels=2, codebook_size=32, latent_dim=16, seed=2)
    idx.fit(beauty, epochs=15, batch_size=128, progress=False)
    codes = idx.encode(beauty)
    assert codes.shape == (2000, 3)
    assert len({tuple(r) for r in codes.tolist()}) == 2000
    _assert_residual_codes_within_tie(idx, beauty, codes[:, :2], idx.encode_raw(beauty, "torch"))
    assert float(((idx.reconstruct(beauty) - beauty) ** 2).mean()) < 0.9 * _variance(beauty)


@pytest.mark.parametrize("cls", ["KMeansIndexer", "RQKMeansIndexer"])
def test_training_free_indexers_beat_random_codebooks(beauty, cls):
    idx = getattr(mf, cls)(codebook_size=64, pca_dim=64, seed=0).fit(beauty)
    mse = float(((idx.reconstruct(beauty) - beauty) ** 2).mean())
    rng = np.random.default_rng(0)
    rand = beauty[rng.choice(2000, 64, replace=False)]
    rand_mse = float(((beauty - rand[mf.assign(beauty, rand)[0]]) ** 2).mean())
    assert mse < rand_mse


@pytest.mark.parametrize(
    "make",
    [
        lambda: mf.MoCIndexer(num_codebooks=2, codebook_size=32, latent_dim=8, metric="cosine"),
        lambda: mf.RQVAEIndexer(levels=2, codebook_size=32, latent_dim=8),
        lambda: mf.KMeansIndexer(codebook_size=32),
        lambda: mf.RQKMeansIndexer(levels=2, codebook_size=32, pca_dim=32, collision_code=True),
    ],
)
def test_save_load_round_trip_gives_identical_codes(beauty, tmp_path, make):
    idx = make().fit(beauty[:800], epochs=3, batch_size=256, progress=False)
    path = tmp_path / "idx.safetensors"
    idx.save(path)
    again = load_indexer(path)
    assert type(again) is type(idx) and again.config == idx.config
    np.testing.assert_array_equal(again.encode(beauty), idx.encode(beauty))
    assert again.summary == idx.summary


def test_corrupt_altered_and_newer_files_are_rejected(beauty, tmp_path):
    idx = mf.KMeansIndexer(codebook_size=16).fit(beauty[:300])
    good = tmp_path / "good.st"
    idx.save(good)
    data = good.read_bytes()
    (tmp_path / "short.st").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_indexer(tmp_path / "short.st")
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    (tmp_path / "flip.st").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="checksum"):
        load_indexer(tmp_path / "flip.st")
    newer = data.replace(b'\\"format_version\\": 2', b'\\"format_version\\": 9')
    assert newer != data
    (tmp_path / "new.st").write_bytes(newer)
    with pytest.raises(ValueError, match="format version 9"):
        load_indexer(tmp_path / "new.st")


def _rewrite(path, out, edit, sign=True, version=None):
    """Copy the indexer file `path` to `out` with its header changed by `edit(header)`;
    `sign` recomputes the checksum as a writer would (a newer or buggy writer, not damage)."""
    import json

    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from moc_fast.index import io

    data = path.read_bytes()
    header = io._read_header(data, path)
    tensors = st_load(data)
    edit(header)
    if version is not None:
        header["format_version"] = version
    if sign:
        covered = header if header["format_version"] >= 2 else None
        header["checksum"] = io._checksum(tensors, covered)
    out.write_bytes(st_save(tensors, metadata={io.META_KEY: json.dumps(header)}))
    return out


def test_the_checksum_covers_the_header_and_configs_are_validated(beauty, tmp_path):
    idx = mf.MoCIndexer(num_codebooks=2, codebook_size=16, latent_dim=8, metric="cosine")
    idx.fit(beauty[:600], epochs=1, batch_size=256, progress=False)
    good = tmp_path / "moc.st"
    idx.save(good)
    # An edited metric once loaded and changed 6-60% of the codes (same length: the spaces
    # keep the safetensors header size, so only the checksum can tell).
    edited = good.read_bytes().replace(b'\\"metric\\": \\"cosine\\"',
                                       b'\\"metric\\":     \\"l2\\"')  # fmt: skip
    assert edited != good.read_bytes()
    (tmp_path / "l2.st").write_bytes(edited)
    with pytest.raises(ValueError, match="checksum: the header or weights"):
        load_indexer(tmp_path / "l2.st")
    unknown = _rewrite(good, tmp_path / "u.st", lambda h: h["config"].update(colour="red"))
    with pytest.raises(ValueError, match=r"\['colour'\], which MoCIndexer does not take"):
        load_indexer(unknown)
    huge = _rewrite(good, tmp_path / "h.st", lambda h: h["config"].update(codebook_size=10**12))
    with pytest.raises(ValueError, match="does not match the stored tensors"):
        load_indexer(huge)  # refused from shapes on the meta device, never allocated
    wide = _rewrite(good, tmp_path / "w.st", lambda h: h.update(input_dim=10**12))
    with pytest.raises(ValueError, match="input_dim"):
        load_indexer(wide)
    bad_value = _rewrite(good, tmp_path / "b.st", lambda h: h["config"].update(metric="manhattan"))
    with pytest.raises(ValueError, match="MoCIndexer: metric must be one of"):
        load_indexer(bad_value)
    # A format 1 file (checksum over the tensors only) still loads, to the same codes.
    old = _rewrite(good, tmp_path / "v1.st", lambda h: None, version=1)
    np.testing.assert_array_equal(load_indexer(old).encode(beauty[:200]), idx.encode(beauty[:200]))


def test_training_free_configs_must_match_their_tensors(beauty, tmp_path):
    good = tmp_path / "rq.st"
    mf.RQKMeansIndexer(levels=2, codebook_size=8, pca_dim=16).fit(beauty[:300]).save(good)
    more = _rewrite(good, tmp_path / "m.st", lambda h: h["config"].update(levels=3))
    with pytest.raises(ValueError, match="does not match the stored tensors"):
        load_indexer(more)


def test_bad_input_is_named(beauty, tmp_path):
    idx = mf.MoCIndexer(num_codebooks=2, codebook_size=16, latent_dim=8)
    with pytest.raises(RuntimeError, match="not fitted"):
        idx.encode(beauty[:10])
    bad = beauty[:300].copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        idx.fit(bad, epochs=1, progress=False)
    with pytest.raises(ValueError, match="at least codebook_size = 16"):
        idx.fit(beauty[:300], epochs=1, batch_size=8, progress=False)
    fitted = mf.KMeansIndexer(codebook_size=8).fit(beauty[:100])
    fitted.save(tmp_path / "k.st")
    with pytest.raises(ValueError, match="built for D = 384"):
        load_indexer(tmp_path / "k.st").encode(beauty[:5, :100])
    with pytest.raises(ValueError, match="latent must be"):
        mf.MoCIndexer(latent="both")


def test_index_report_measures_discriminability_and_redundancy(beauty):
    reports = {}
    for m in (1, 3):
        idx = mf.MoCIndexer(num_codebooks=m, codebook_size=32, latent_dim=16, seed=3)
        idx.fit(beauty, epochs=5, batch_size=256, progress=False)
        reports[f"moc-{m}"] = index_report(idx, beauty)
    one, three = reports["moc-1"], reports["moc-3"]
    assert three["discriminability"] > one["discriminability"]
    assert three["collision_rate"] < one["collision_rate"]
    assert 0 < three["redundancy"] < 1 and one["redundancy"] == 0
    assert all(0 < u <= 1 for u in three["utilization"])
    assert three["collision_rate_with_suffix"] == 0
    assert "| moc-3 |" in format_report(reports)


def test_nmi_of_identical_and_independent_columns():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 8, 20000)
    assert nmi(a, a) == pytest.approx(1.0)
    assert nmi(a, rng.integers(0, 8, 20000)) < 0.01
    assert nmi(a, (a + 3) % 8) == pytest.approx(1.0)  # a relabelling carries the same information


def test_index_report_values_are_plain_python_numbers():
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    rep = index_report(mf.RQKMeansIndexer(levels=2, codebook_size=8).fit(x), x)
    for key, value in rep.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            assert v is None or type(v) in (int, float, str), (key, type(v))
