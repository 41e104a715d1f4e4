"""The study's fairness machinery: reproducible cells, indexer seeds in the cache key, ME over
codes, IA per representation, cold-item AUC, the split-matched sampler, regularisation."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from moc_fast.data.protocol import build_ctr, popularity_scores
from moc_fast.data.synthetic import synthetic_catalog
from moc_fast.study import StudyConfig, StudyData, train_cell
from moc_fast.train import auc_by_item_count, auc_score

FAST = dict(epochs=1, index_epochs=2, codebook_size=32, batch_size=1024, progress=False)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOC_FAST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_same_config_and_seed_reproduce_codes_and_results_across_processes(tmp_path):
    code = """
import sys
from moc_fast.study import StudyConfig, run_study
run_study(StudyConfig(datasets=["synthetic"], methods=["id-only", "me", "rqvae", "moc-gate"],
                      scales=[1, 2], seeds=[3], epochs=2, index_epochs=2, codebook_size=32,
                      batch_size=1024, out=sys.argv[1], progress=False))
"""
    outs = []
    for run in ("a", "b"):  # separate caches: every indexer is trained again in each process
        env = {**os.environ, "MOC_FAST_CACHE": str(tmp_path / f"cache-{run}")}
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / run)], env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        with (tmp_path / run / "results.csv").open() as f:
            outs.append([{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)])
    assert len(outs[0]) == 7 and outs[0] == outs[1]
    codes = [sorted((tmp_path / f"cache-{run}" / "codes").glob("*.npz")) for run in ("a", "b")]
    assert [p.name for p in codes[0]] == [p.name for p in codes[1]]
    assert len(codes[0]) == 4  # MoC 1x (shared by ME and moc-gate), MoC 2x, RQ-VAE 1x and 2x
    for a, b in zip(*codes, strict=True):
        np.testing.assert_array_equal(np.load(a)["codes"], np.load(b)["codes"])


def test_indexer_seed_is_in_the_codes_and_their_cache_key(cache):
    ds = StudyData("synthetic", StudyConfig(**FAST))
    a, b = ds.codes("moc", 2, seed=0)[0], ds.codes("moc", 2, seed=1)[0]
    assert not np.array_equal(a, b)
    files = sorted(p.name for p in (cache / "codes").glob("*.npz"))
    assert len(files) == 2 and "-s0-" in files[0] and "-s1-" in files[1]
    again = StudyData("synthetic", StudyConfig(**FAST)).codes("moc", 2, seed=1)[0]
    np.testing.assert_array_equal(again, b)  # read back from the cache


def test_training_leaves_the_global_rng_alone(cache):
    import moc_fast as mf

    state = torch.get_rng_state()
    x = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    mf.MoCIndexer(num_codebooks=2, codebook_size=8, seed=5).fit(x, epochs=2, progress=False)
    ds = StudyData("synthetic", StudyConfig(**FAST))
    train_cell(ds, "id-only", 1, "deepfm", 0)
    assert torch.equal(torch.get_rng_state(), state)


def test_me_scales_every_field_including_the_1x_semantic_code(cache):
    ds = StudyData("synthetic", StudyConfig(**FAST))
    row, model = train_cell(ds, "me", 2, "dcnv2", 0)
    assert model.num_sets == 2 and model.num_codebooks == 1
    assert len(model.fields.sets) == 2
    assert model.fields.sets[0].field_dims[-1] == ds.codes("moc", 1, 0)[0].max() + 1
    assert "discriminability" in row and row["ia_item_id"] > 1


def test_information_abundance_per_representation(cache):
    ds = StudyData("synthetic", StudyConfig(**FAST))
    rq, _ = train_cell(ds, "rqvae", 2, "deepfm", 0)
    moc, _ = train_cell(ds, "moc-gate", 2, "deepfm", 0)
    for row in (rq, moc):
        assert row["info_abundance"] >= 1 and row["ia_fused"] >= 1 and row["ia_item_id"] >= 1
    assert rq["ia_collision"] >= 1 and "ia_collision" not in moc
    assert {"auc_items_0", "auc_items_10plus"} <= set(moc)


def test_auc_by_item_count_buckets_samples_by_their_items_popularity():
    y = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    p = np.array([0.9, 0.1, 0.2, 0.8, 0.6, 0.4, 0.7, 0.3])
    counts = np.array([0, 0, 1, 2, 5, 5, 50, 10])
    got = auc_by_item_count(y, p, counts)
    assert got["auc_items_0"] == 1.0 and got["auc_items_1_2"] == 0.0
    assert got["auc_items_3_9"] == 1.0 and got["auc_items_10plus"] == 1.0
    assert np.isnan(auc_by_item_count(y[:1], p[:1], counts[:1])["auc_items_0"])


def test_split_matched_negatives_follow_the_positives_so_popularity_is_chance():
    data = synthetic_catalog()
    uniform = build_ctr(data, seed=0)
    matched = build_ctr(data, seed=0, sampler="split-matched")
    seen = set((data.users * data.num_items + data.items).tolist())
    for name in ("train", "val", "test"):
        part = getattr(matched, name)
        neg = part.y.numpy() == 0
        keys = part.x[:, 0].numpy() * data.num_items + part.x[:, 1].numpy()
        assert not any(k in seen for k in keys[neg].tolist())  # never a positive of that user
        assert set(part.x[neg, 1].tolist()) <= set(part.x[~neg, 1].tolist())  # split's positives
    pop = lambda s: auc_score(s.test.y.numpy(), popularity_scores(s, s.test))  # noqa: E731
    assert abs(pop(matched) - 0.5) < abs(pop(uniform) - 0.5)
    assert abs(pop(matched) - 0.5) < 0.05
    with pytest.raises(ValueError, match="sampler"):
        build_ctr(data, sampler="popular")


def test_min_epochs_keeps_early_stopping_off_during_the_warm_up(cache):
    runs = {}
    for warm_up in (0, 8):
        cfg = StudyConfig(**{**FAST, "epochs": 8, "lr": 0.01}, patience=1, min_epochs=warm_up)
        runs[warm_up], _ = train_cell(StudyData("synthetic", cfg), "id-only", 1, "deepfm", 0)
    assert runs[0]["epochs"] < 8  # the plain rule stops this run early...
    assert runs[8]["epochs"] == 8  # ...the warm-up does not, and the runs agree until then
    assert runs[8]["val_curve"][: runs[0]["epochs"]] == runs[0]["val_curve"]
    with pytest.raises(ValueError, match="min_epochs"):
        StudyConfig(min_epochs=-1)


def test_embedding_regulariser_shrinks_the_tables(cache):
    norms = {}
    for lam in (0.0, 1e-2):
        cfg = StudyConfig(**{**FAST, "epochs": 2}, embedding_l2=lam)
        _, model = train_cell(StudyData("synthetic", cfg), "id-only", 1, "deepfm", 0)
        norms[lam] = float(sum(p.detach().pow(2).sum() for p in model.embedding_parameters()))
    assert norms[1e-2] < 0.5 * norms[0.0]
