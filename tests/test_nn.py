"""Downstream stage: MoCEmbedding, ME, backbones, CTRModel and the training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moc_fast.nn import BACKBONES, CTRModel, MoCEmbedding, MultiEmbedding, make_backbone
from moc_fast.train import CTRData, auc_score, early_stop, evaluate, fit_ctr


def synthetic_ctr(n: int = 10000, seed: int = 0) -> tuple[CTRData, CTRData, CTRData, list[int]]:
    """Users and items with latent factors; clicks follow their affinity through codes
    (items' codes are noisy views of item factors), so every input carries signal."""
    g = np.random.default_rng(seed)
    users, items = 50, 300
    uf, itf = g.standard_normal((users, 4)), g.standard_normal((items, 4))
    item_codes = np.stack(
        [(itf[:, j] > 0).astype(int) * 2 + (itf[:, (j + 1) % 4] > 0) for j in range(3)], 1
    )
    u, i = g.integers(0, users, n), g.integers(0, items, n)
    logit = 1.5 * (uf[u] * itf[i]).sum(1)
    y = (g.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    x = torch.tensor(np.stack([u, i], 1))
    data = CTRData(
        x, torch.tensor(y), torch.tensor(item_codes[i]), torch.tensor(itf[i], dtype=torch.float32)
    )
    parts = np.split(np.arange(n), [int(0.8 * n), int(0.9 * n)])
    sub = lambda idx: CTRData(*(t[idx] for t in (data.x, data.y, data.codes, data.dense)))  # noqa: E731
    return sub(parts[0]), sub(parts[1]), sub(parts[2]), [users, items]


@pytest.fixture(scope="module")
def ctr():
    return synthetic_ctr()


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_each_backbone_learns(ctr, backbone):
    train, val, test, dims = ctr
    torch.manual_seed(0)
    model = CTRModel(
        dims,
        embed_dim=8,
        backbone=backbone,
        num_codebooks=3,
        codebook_size=4,
        fusion="gate",
        dense_dim=4,
        backend="torch",
    )
    hist = fit_ctr(model, train, val, epochs=8, batch_size=256, lr=3e-3, progress=False)
    assert evaluate(model, test)["auc"] > 0.7
    assert 1 <= hist["best_epoch"] <= hist["epochs_run"]


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_me_sets_have_their_own_interaction_parameters(backbone):
    """Guo et al.'s ME: each set has its own interaction (and first deep layer); it is not the
    plain model applied to the averaged embeddings."""
    torch.manual_seed(0)
    me2 = make_backbone(backbone, 5, 8, num_sets=2)
    per_set = [sum(p.numel() for p in m.parameters()) for m in me2.interactions]
    assert per_set[0] > 0 and per_set[0] == per_set[1]
    plain = make_backbone(backbone, 5, 8)
    plain.load_state_dict(
        {k: v for k, v in me2.state_dict().items() if not k.startswith("interactions.1")}
    )
    me2.eval()
    plain.eval()
    e = torch.randn(2, 16, 5, 8)
    out = me2(e)
    assert not torch.allclose(out, plain(e.mean(0)), atol=1e-4)
    with torch.no_grad():
        for p in me2.interactions[1].parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert not torch.allclose(me2(e), out, atol=1e-5)  # the second set's parameters matter


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_me_mode_learns_and_one_set_is_the_plain_structure(ctr, backbone):
    train, val, test, dims = ctr
    plain = make_backbone(backbone, 5, 8)
    me1 = make_backbone(backbone, 5, 8, num_sets=1)
    assert [p.shape for p in plain.parameters()] == [p.shape for p in me1.parameters()]
    me2 = make_backbone(backbone, 5, 8, num_sets=2)
    inter = sum(p.numel() for p in plain.interactions.parameters())
    total = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert total(me2) == total(plain) + inter  # one more interaction module, one shared head
    # Two identical sets through identical interaction modules give the plain output.
    me2.load_state_dict(
        {
            **plain.state_dict(),
            **{
                k.replace("interactions.0", "interactions.1"): v
                for k, v in plain.state_dict().items()
                if k.startswith("interactions.0")
            },
        }
    )
    plain.eval()
    me2.eval()
    e = torch.randn(4, 5, 8)
    torch.testing.assert_close(me2(torch.stack([e, e])), plain(e))
    torch.manual_seed(0)
    model = CTRModel(
        dims,
        embed_dim=8,
        backbone=backbone,
        num_codebooks=3,
        codebook_size=4,
        fusion="none",
        num_sets=2,
    )
    fit_ctr(model, train, val, epochs=6, batch_size=256, lr=3e-3, progress=False)
    assert evaluate(model, test)["auc"] > 0.65


def test_fusion_variants_reduce_to_their_definitions():
    codes = torch.randint(0, 10, (6, 3))
    for fusion, factor in [("gate", 0.5), ("residual", 1.0), ("none", 1.0)]:
        layer = MoCEmbedding(3, 10, 4, fusion=fusion, backend="torch")
        if fusion != "none":
            torch.nn.init.zeros_(layer.w_up)  # u = 0: gate = E·σ(0), residual = E + 0
        e = layer.tables.detach()[torch.arange(3), codes]
        torch.testing.assert_close(layer(codes).detach(), factor * e)


def test_moc_embedding_rejects_bad_codes():
    layer = MoCEmbedding(2, 8, 4, backend="torch")
    with pytest.raises(ValueError, match="codebook_size = 8"):
        layer(torch.tensor([[0, 8]]))
    with pytest.raises(ValueError, match="shape"):
        layer(torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="int64"):
        layer(torch.zeros(3, 2))
    with pytest.raises(TypeError, match="torch integer tensor.*numpy.ndarray"):
        layer(np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="fusion"):
        MoCEmbedding(2, 8, 4, fusion="sum")


def test_moc_embedding_takes_any_leading_shape_like_nn_embedding():
    layer = MoCEmbedding(3, 10, 4, fusion="gate", backend="torch")
    codes = torch.randint(0, 10, (5, 6, 3))  # a sequence of items per row
    out = layer(codes)
    assert out.shape == (5, 6, 3, 4)
    torch.testing.assert_close(out[2], layer(codes[2]))
    assert layer(torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3, 4)
    assert layer(torch.zeros(2, 0, 3, dtype=torch.long)).shape == (2, 0, 3, 4)
    assert layer(torch.tensor([1, 2, 3])).shape == (3, 4)
    assert (layer.num_embeddings, layer.embedding_dim) == (10, 4)


def test_triton_backend_in_the_module_matches_torch():
    torch.manual_seed(0)
    layer = MoCEmbedding(3, 16, 8, fusion="gate", backend="torch")
    codes = torch.randint(0, 16, (33, 3))
    ref = layer(codes)
    layer.backend = "triton"
    torch.testing.assert_close(layer(codes), ref, rtol=1e-5, atol=1e-6)


def test_field_and_config_errors_are_clear(ctr):
    _, _, _, dims = ctr
    model = CTRModel(dims, embed_dim=4, backbone="dnn")
    with pytest.raises(ValueError, match=r"x\[0, 1\] = 300 is out of range"):
        model(torch.tensor([[0, 300]]))
    with pytest.raises(ValueError, match=r"shape \(B, F=2\)"):
        model(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown backbone"):
        CTRModel(dims, backbone="widedeep")
    with pytest.raises(ValueError, match="unknown CTRModel config keys"):
        CTRModel.from_config({"field_dims": dims, "embedding_dim": 4})
    with pytest.raises(ValueError, match="num_sets must be"):
        MultiEmbedding(dims, 4, 0)


def test_save_load_of_a_trained_model(ctr, tmp_path):
    train, val, test, dims = ctr
    torch.manual_seed(1)
    model = CTRModel(
        dims, embed_dim=8, backbone="dcnv2", num_codebooks=3, codebook_size=4, fusion="residual"
    )
    fit_ctr(model, train, val, epochs=2, batch_size=512, progress=False)
    model.save(tmp_path / "m.safetensors")
    again = CTRModel.load(tmp_path / "m.safetensors")
    assert again.config == model.config
    assert evaluate(again, test) == evaluate(model, test)


def test_training_is_deterministic_for_a_seed(ctr):
    train, val, _, dims = ctr

    def run():
        torch.manual_seed(3)
        m = CTRModel(dims, embed_dim=8, backbone="autoint+", num_codebooks=3, codebook_size=4)
        h = fit_ctr(m, train, val, epochs=2, batch_size=512, seed=3, progress=False)
        return m, h

    (m1, h1), (m2, h2) = run(), run()
    assert h1["history"] == h2["history"]
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_nan_loss_names_the_epoch_and_batch(ctr):
    train, val, _, dims = ctr
    bad = CTRData(train.x, train.y, train.codes, torch.full_like(train.dense, float("nan")))
    model = CTRModel(
        dims, embed_dim=4, backbone="dnn", num_codebooks=3, codebook_size=4, dense_dim=4
    )
    with pytest.raises(FloatingPointError, match="epoch 1, batch 0"):
        fit_ctr(model, bad, val, epochs=1, progress=False)


def test_early_stopping_restores_the_best_epoch(ctr):
    train, val, _, dims = ctr
    torch.manual_seed(0)
    model = CTRModel(dims, embed_dim=8, backbone="dnn")
    h = fit_ctr(model, train, val, epochs=30, batch_size=128, lr=1e-2, patience=3, progress=False)
    best = max(r["val_auc"] for r in h["history"])
    assert h["best_val_auc"] == best
    assert evaluate(model, val)["auc"] == pytest.approx(best)
    assert h["epochs_run"] - h["best_epoch"] <= 3


def test_early_stop_replays_fit_ctr_on_a_longer_curve(ctr):
    """A seeded run is the same up to where it stops, so the rule applied to a full run's
    curve must give what the early-stopped run did (what patience_check.py relies on)."""
    train, val, _, dims = ctr
    runs = []
    for patience, min_epochs in ((12, 0), (2, 0), (2, 8)):
        torch.manual_seed(0)
        model = CTRModel(dims, embed_dim=8, backbone="dnn")
        runs.append(
            fit_ctr(model, train, val, epochs=12, batch_size=256, lr=3e-2, patience=patience,
                    min_epochs=min_epochs, seed=0, progress=False)
        )  # fmt: skip
    full, short, warm = runs
    curve = [h["val_auc"] for h in full["history"]]
    assert len(curve) == 12
    assert early_stop(curve, 2) == (short["best_epoch"], short["epochs_run"])
    assert early_stop(curve, 12)[0] == full["best_epoch"]
    assert early_stop(curve, 2, 8) == (warm["best_epoch"], warm["epochs_run"])
    assert warm["epochs_run"] >= 8


def test_early_stop_rule():
    assert early_stop([0.5, 0.6, 0.55, 0.58, 0.7], 3) == (5, 5)  # a dip of 2 is survived
    assert early_stop([0.5, 0.6, 0.55, 0.58, 0.59, 0.7], 3) == (2, 5)  # a dip of 3 is not
    assert early_stop([0.5], 3) == (1, 1)
    dip = [0.58, 0.57, 0.57, 0.57, 0.59, 0.62, 0.63]  # popularity level, a dip, then learning
    assert early_stop(dip, 3) == (1, 4)
    assert early_stop(dip, 3, min_epochs=5) == (7, 7)
    assert early_stop([0.6, 0.5, 0.5, 0.5, 0.5, 0.5], 3, min_epochs=5) == (1, 5)


@settings(max_examples=300, deadline=None)
@given(
    curve=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30),
    patience=st.integers(1, 6),
    min_epochs=st.integers(0, 30),
)
def test_a_warm_up_changes_only_runs_that_stopped_inside_it(curve, patience, min_epochs):
    """What lets a warm-up be added to a finished grid: a run the plain rule stopped at or
    after `min_epochs` stops at the same epoch with the same best epoch under the warm-up."""
    plain = early_stop(curve, patience)
    warm = early_stop(curve, patience, min_epochs)
    if plain[1] >= min_epochs:
        assert warm == plain
    else:
        assert warm[1] >= min(min_epochs, len(curve))
        assert curve[warm[0] - 1] >= curve[plain[0] - 1]


def test_auc_matches_pairwise_counting():
    g = np.random.default_rng(0)
    y = g.integers(0, 2, 300)
    p = np.round(g.random(300), 1)  # many ties
    pos, neg = p[y == 1], p[y == 0]
    want = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert auc_score(y, p) == pytest.approx(want)
