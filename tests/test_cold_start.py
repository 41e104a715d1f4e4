"""Cold start: out-of-vocabulary rows, ItemCodes, and scoring items added after training;
meta-device construction as TorchRec's model-parallel initialisation does it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moc_fast.index import RQKMeansIndexer, RQVAEIndexer
from moc_fast.nn import CTRModel, FieldEmbedding, ItemCodes, MoCEmbedding, MultiEmbedding
from moc_fast.train import CTRData, auc_score, fit_ctr, predict


def rows_reference(x: np.ndarray, dims: list[int], k: int) -> np.ndarray:
    """Table rows by hand: vocabulary rows offset per field, unseen ids to their field's
    `id mod k` out-of-vocabulary row after all vocabulary rows."""
    out = np.empty_like(x)
    vocab = sum(dims)
    for f, d in enumerate(dims):
        seen = (x[:, f] >= 0) & (x[:, f] < d)
        out[:, f] = np.where(seen, x[:, f] + sum(dims[:f]), vocab + f * k + np.mod(x[:, f], k))
    return out


@pytest.mark.parametrize("k", [1, 3])
def test_unseen_ids_use_their_fields_out_of_vocabulary_rows(k):
    dims = [5, 7, 2]
    emb = FieldEmbedding(dims, 4, oov_buckets=k)
    assert emb.table.num_embeddings == sum(dims) + k * len(dims)
    rng = np.random.default_rng()
    x = rng.integers(-4, 12, (200, 3))
    got = emb(torch.from_numpy(x))
    want = emb.table.weight[torch.from_numpy(rows_reference(x, dims, k))]
    assert torch.equal(got, want)
    known = torch.from_numpy(rng.integers(0, 2, (50, 3)))
    plain = FieldEmbedding(dims, 4)
    plain.table.weight.data = emb.table.weight.data[: sum(dims)]
    assert torch.equal(emb(known), plain(known))  # seen ids: the vocabulary rows, as before
    with pytest.raises(ValueError, match="out of range for field 1.*oov_buckets"):
        plain(torch.tensor([[0, 7, 0]]))
    with pytest.raises(ValueError, match="oov_buckets must be >= 0"):
        FieldEmbedding(dims, 4, oov_buckets=-1)


def test_item_codes_lookup_add_and_state_round_trip():
    ic = ItemCodes(np.array([[1, 2], [3, 0], [1, 1]]), codebook_size=4)
    assert torch.equal(ic(torch.tensor([[2, 0]])), torch.tensor([[[1, 1], [1, 2]]]))
    new = ic.add_items(np.array([[0, 3], [2, 2]]))
    assert new.tolist() == [3, 4] and len(ic) == 5
    assert ic(torch.tensor([4])).tolist() == [[2, 2]]
    with pytest.raises(ValueError, match="item 5 has no codes.*add_items"):
        ic(torch.tensor([5]))
    with pytest.raises(ValueError, match="code 4 is out of range.*codebook_size = 4"):
        ic.add_items(np.array([[4, 0]]))
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        ic.add_items(np.array([[1, 2, 3]]))
    with pytest.raises(TypeError, match="integers"):
        ItemCodes(np.zeros((2, 2)))
    fresh = ItemCodes(num_codes=2, codebook_size=4)
    fresh.load_state_dict(ic.state_dict())
    assert torch.equal(fresh.table, ic.table)
    assert not any(p.requires_grad for p in ic.parameters())


def test_item_codes_use_the_smallest_dtype_and_look_up_int64():
    codes = np.random.default_rng(0).integers(0, 256, (1000, 3))
    ic = ItemCodes(codes, codebook_size=256)
    assert ic.table.dtype == torch.uint8 and ic.table.nbytes == 3000  # 8x less than int64
    out = ic(torch.arange(1000))
    assert out.dtype == torch.int64 and torch.equal(out, torch.from_numpy(codes))
    assert ItemCodes(codes, codebook_size=1000).table.dtype == torch.int16
    assert ItemCodes(codes, codebook_size=70_000).table.dtype == torch.int32
    grows = ItemCodes(codes)  # no codebook_size: the dtype follows the codes held
    assert grows.table.dtype == torch.uint8
    grows.add_items(np.array([[300, 0, 1]]))
    assert grows.table.dtype == torch.int16
    assert grows(torch.tensor([1000])).tolist() == [[300, 0, 1]]
    # a state saved with an int64 table (files written before) loads into the small table
    old = {"table": torch.from_numpy(codes)}
    fresh = ItemCodes(num_codes=3, codebook_size=256)
    fresh.load_state_dict(old)
    assert fresh.table.dtype == torch.uint8 and torch.equal(fresh(torch.arange(1000)), old["table"])


def test_new_items_get_the_collision_codes_one_encode_call_would_give():
    x = np.random.default_rng().standard_normal((400, 8)).astype(np.float32)
    x[390:] = x[5]  # new items that collide with an old one and with each other
    idx = RQKMeansIndexer(2, 4, collision_code=True).fit(x)
    whole = idx.encode(x)
    ic = ItemCodes(idx.encode(x[:380]))
    ic.add_items(indexer=idx, embeddings=x[380:])
    assert torch.equal(ic.table, torch.from_numpy(whole))


def synthetic_topics(seed: int, users: int = 300, items: int = 400, topics: int = 8):
    """Items in topics (embeddings: topic centre + noise); each user likes two topics;
    positives are liked-topic items, negatives items of other topics."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, 16)) * 3
    topic = rng.integers(0, topics, items)
    emb = (centres[topic] + rng.standard_normal((items, 16))).astype(np.float32)
    liked = np.stack([rng.choice(topics, 2, replace=False) for _ in range(users)])
    return rng, topic, emb, liked


def samples(rng, topic, liked, item_ids, n):
    u = rng.integers(0, len(liked), n)
    i = rng.choice(item_ids, n)
    y = (topic[i][:, None] == liked[u]).any(1).astype(np.float32)
    return np.stack([u, i], 1), y


def test_a_trained_model_scores_items_added_after_training():
    rng, topic, emb, liked = synthetic_topics(seed=0)
    old, new = np.arange(300), np.arange(300, 400)  # the last 100 items never seen in training
    idx = RQKMeansIndexer(2, 8, seed=0).fit(emb[old])
    model = CTRModel([300, 300], embed_dim=8, backbone="deepfm", num_codebooks=2,
                     codebook_size=8, fusion="gate", oov_buckets=1, item_field=1)  # fmt: skip
    model.item_codes.add_items(indexer=idx, embeddings=emb[old])
    data = {}
    for name, n in (("train", 20000), ("val", 3000)):
        x, y = samples(rng, topic, liked, old, n)
        xt = torch.from_numpy(x)
        data[name] = CTRData(xt, torch.from_numpy(y), codes=model.item_codes(xt[:, 1]))
    # 12 epochs: trained to convergence (at 6, the new-item AUC ranged 0.78-0.96 over model
    # initialisations; at 10, >= 0.997 over 12 initialisations)
    fit_ctr(model, data["train"], data["val"], epochs=12, batch_size=512, lr=3e-3,
            device="cpu", progress=False)  # fmt: skip
    added = model.item_codes.add_items(indexer=idx, embeddings=emb[new])
    assert added.tolist() == new.tolist()
    x, y = samples(rng, topic, liked, new, 4000)
    model.eval()
    with torch.no_grad():
        p = torch.sigmoid(model(torch.from_numpy(x))).numpy()  # ids only: codes looked up
        assert np.isfinite(p).all()
        wrong = torch.sigmoid(model(torch.from_numpy(x), codes=torch.zeros(len(x), 2).long()))
    assert auc_score(y, p) > 0.95  # new items ranked by their codes, no retraining
    assert auc_score(y, wrong.numpy()) < 0.7  # and it is the codes that carry it
    # the same scores through the training pipeline's path with explicit codes
    xt = torch.from_numpy(x)
    explicit = CTRData(xt, torch.from_numpy(y), codes=model.item_codes(xt[:, 1]))
    np.testing.assert_allclose(predict(model, explicit), p, rtol=1e-5, atol=1e-6)


def test_a_saved_model_keeps_the_items_added_to_it(tmp_path):
    model = CTRModel([10, 20], embed_dim=4, num_codebooks=3, codebook_size=8, item_field=1,
                     oov_buckets=2)  # fmt: skip
    model.item_codes.add_items(np.random.default_rng().integers(0, 8, (25, 3)))
    model.save(tmp_path / "m.safetensors")
    back = CTRModel.load(tmp_path / "m.safetensors")
    assert torch.equal(back.item_codes.table, model.item_codes.table)
    x = torch.tensor([[3, 24], [12, 22]])  # an unseen user; items added after training
    model.eval(), back.eval()
    assert torch.equal(model(x), back(x))
    with pytest.raises(ValueError, match="item_field needs semantic codes"):
        CTRModel([10, 20], item_field=1)


def test_rqvae_new_items_join_the_collision_ranking():
    x = np.random.default_rng().standard_normal((300, 12)).astype(np.float32)
    x[280:] = x[0]
    idx = RQVAEIndexer(2, 8, latent_dim=4, hidden=(16,), seed=0)
    idx.fit(x, epochs=2, batch_size=64, progress=False, device="cpu")
    ic = ItemCodes.from_indexer(idx, x[:270])
    ic.add_items(indexer=idx, embeddings=x[270:])
    assert torch.equal(ic.table, torch.from_numpy(idx.encode(x)))


@pytest.mark.parametrize("make", [
    lambda **f: MoCEmbedding(3, 16, 8, "gate", **f),
    lambda **f: MoCEmbedding(2, 5, 4, "none", **f),
    lambda **f: FieldEmbedding([4, 6], 8, oov_buckets=2, **f),
    lambda **f: MultiEmbedding([4, 6], 8, 2, oov_buckets=1, **f),
])  # fmt: skip
def test_meta_construction_then_materialisation_works(make):
    """What TorchRec's DistributedModelParallel does with a module it does not shard: build
    it on the meta device (no memory), `to_empty` on the real device, `reset_parameters`."""
    meta = make(device="meta")
    assert all(p.is_meta for p in meta.parameters())
    meta.to_empty(device="cpu")
    for m in meta.modules():
        if isinstance(m, (MoCEmbedding, FieldEmbedding)):
            m.reset_parameters()
    direct = make()
    for (name, a), b in zip(direct.state_dict().items(), meta.state_dict().values(), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert torch.isfinite(b).all(), name
        if name.endswith(("tables", "weight")) and b.numel() > 30:
            assert 0.006 < float(b.std()) < 0.014, name  # N(0, 0.01²), not leftover memory
    direct.load_state_dict(meta.state_dict())
    if isinstance(direct, MoCEmbedding):
        inp = torch.randint(0, direct.codebook_size, (7, direct.num_codebooks))
    else:
        inp = torch.tensor([[1, 3], [0, 9], [-2, 5]])  # OOV ids need the refilled buffers
    assert torch.equal(direct(inp), meta(inp))
    wide = make(dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in wide.parameters())
