"""Generative retrieval: the leave-one-out protocol (no target leaks into its user's training
input), the metrics against hand-computed cases, exact top-k over a code table, the trie
(beam search never returns an item that does not exist), and the models learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moc_fast.data.datasets import Interactions
from moc_fast.data.synthetic import synthetic_catalog
from moc_fast.retrieval import (
    TIGER,
    IDTrie,
    ParallelDecoder,
    Popularity,
    SASRec,
    build_splits,
    code_scores,
    evaluate,
    fit,
    metrics_from_ranks,
    ranks_from_lists,
    target_ranks,
    topk_by_codes,
)
from moc_fast.retrieval.protocol import PAD


def interactions(seqs: list[list[int]], num_items: int) -> Interactions:
    users = np.concatenate([[u] * len(s) for u, s in enumerate(seqs)]).astype(np.int64)
    items = np.concatenate(seqs).astype(np.int64)
    order = np.concatenate([np.arange(len(s)) for s in seqs]).astype(np.int64)
    return Interactions("t", [str(u) for u in range(len(seqs))],
                        [str(i) for i in range(num_items)], users, items, order, None)  # fmt: skip


# ---------------------------------------------------------------- protocol


def test_leave_one_out_by_hand():
    s = build_splits(interactions([[3, 1, 4, 1, 5], [9, 2], [2, 6, 5]], 10), max_history=3)
    assert s.test.target.tolist() == [5, 5] and s.val.target.tolist() == [1, 6]
    assert s.test.history.tolist() == [[1, 4, 1], [PAD, 2, 6]]
    assert s.val.history.tolist() == [[3, 1, 4], [PAD, PAD, 2]]
    # training: prefixes of [3, 1, 4], all of [9, 2] (fewer than 3 items), [2]
    assert s.train.target.tolist() == [1, 4, 2]
    assert s.train.history.tolist() == [[PAD, PAD, 3], [PAD, 3, 1], [PAD, PAD, 9]]
    assert s.train.user.tolist() == [0, 0, 1]


def test_no_test_or_validation_target_is_in_its_users_training_input():
    data = synthetic_catalog(num_users=300, num_items=200, seed=1)  # no repeats within a user
    s = build_splits(data)
    for split in (s.test, s.val):
        for u, target in zip(split.user, split.target, strict=True):
            rows = s.train.user == u
            assert target not in s.train.history[rows] and target not in s.train.target[rows]
    # and the validation target is in the test history (it precedes the test item)
    assert all(s.test.history[i, -1] == s.val.target[i] for i in range(len(s.test)))


def test_the_held_out_tail_is_never_a_training_example():
    data = synthetic_catalog(num_users=300, num_items=200, seed=2)
    s = build_splits(data)
    n_per_user = np.bincount(data.users, minlength=data.num_users)
    # every user with >= 3 items contributes exactly len - 3 training examples
    train_per_user = np.bincount(s.train.user, minlength=data.num_users)
    long = n_per_user >= 3
    np.testing.assert_array_equal(train_per_user[long], n_per_user[long] - 3)
    # and the last training example of a user ends two items before the end
    order = np.lexsort((data.order, data.users))
    items = data.items[order]
    starts = np.r_[0, np.cumsum(n_per_user)[:-1]]
    for u in np.flatnonzero(long)[:50]:
        seq = items[starts[u] : starts[u] + n_per_user[u]]
        rows = np.flatnonzero(s.train.user == u)
        if len(rows):
            assert s.train.target[rows[-1]] == seq[-3]
            assert seq[-2] == s.val.target[s.val.user == u][0]
            assert seq[-1] == s.test.target[s.test.user == u][0]


def test_cold_items_never_appear_in_training():
    data = synthetic_catalog(num_users=300, num_items=200, seed=3)
    s = build_splits(data, cold_share=0.05, seed=7)
    assert s.cold.sum() == 10
    cold = np.flatnonzero(s.cold)
    assert not np.isin(s.train.target, cold).any()
    assert not np.isin(s.train.history, cold).any()
    assert np.isin(s.test.target, cold).any()  # they are still held-out targets
    again = build_splits(data, cold_share=0.05, seed=7)
    np.testing.assert_array_equal(again.cold, s.cold)


# ---------------------------------------------------------------- metrics


def test_metrics_by_hand():
    # ranks 0, 3, 7, 12 and a miss (-1)
    m = metrics_from_ranks(np.array([0, 3, 7, 12, -1]))
    assert m["recall@5"] == pytest.approx(2 / 5)
    assert m["recall@10"] == pytest.approx(3 / 5)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(5)) / 5)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(9)) / 5)


def test_ranks_count_higher_scores_and_lower_index_ties():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.9, 0.2], [1.0, 1.0, 1.0, 0.0, 1.0]])
    assert target_ranks(scores, torch.tensor([2, 4])).tolist() == [2, 3]
    assert target_ranks(scores, torch.tensor([3, 0])).tolist() == [1, 0]
    lists = np.array([[4, 2, 7], [1, -1, -1]])
    assert ranks_from_lists(lists, np.array([7, 3])).tolist() == [2, -1]


# ---------------------------------------------------------------- exact top-k


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 300), m=st.integers(1, 4), k=st.integers(1, 40), kk=st.integers(1, 9),
       chunk=st.integers(1, 64), seed=st.integers(0, 2**31))  # fmt: skip
def test_topk_by_codes_equals_brute_force(n, m, k, kk, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    logp = torch.randn(3, m, kk, generator=g).log_softmax(-1)
    codes = torch.randint(0, kk, (n, m), generator=g)  # few codes: many exact ties
    items, scores = topk_by_codes(logp, codes, k, chunk=chunk)
    full = torch.stack([sum(logp[b, j, codes[:, j]] for j in range(m)) for b in range(3)])
    np.testing.assert_allclose(code_scores(logp, codes), full, rtol=1e-6, atol=1e-6)
    # brute force: a stable sort by descending score (ties: lower index first)
    want = torch.sort(code_scores(logp, codes), dim=1, descending=True, stable=True)
    assert torch.equal(items, want.indices[:, : min(k, n)])
    assert torch.equal(scores, want.values[:, : min(k, n)])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_topk_by_codes_refuses_nan_and_plus_inf_like_the_engine(bad):
    logp = torch.zeros(1, 2, 4)
    logp[0, 1, 2] = bad
    with pytest.raises(ValueError, match=r"logp must not hold NaN or \+inf"):
        topk_by_codes(logp, torch.tensor([[0, 1], [1, 2]]), 1)


# ---------------------------------------------------------------- the trie and TIGER


def test_trie_allows_only_real_prefixes():
    ids = np.array([[0, 1, 0], [0, 1, 1], [0, 2, 0], [3, 0, 0]])
    trie = IDTrie(ids)
    assert trie.allowed(()).tolist() == [0, 3]
    assert trie.allowed((0,)).tolist() == [1, 2]
    assert trie.allowed((0, 1)).tolist() == [0, 1]
    assert trie.allowed((1,)).tolist() == []
    assert trie.item[(3, 0, 0)] == 3
    with pytest.raises(ValueError, match="unique"):
        IDTrie(np.array([[0, 1], [0, 1]]))


def test_tiger_beam_search_returns_only_real_items():
    # An untrained model puts mass everywhere: only the trie keeps it to the 60 real IDs of a
    # space of 8 x 8 x 4 = 256.
    rng = np.random.default_rng(0)
    ids = np.unique(np.c_[rng.integers(0, 8, (200, 2)), np.zeros((200, 1), int)], axis=0)[:60]
    ids[:, 2] = rng.integers(0, 4, len(ids))
    ids = np.unique(ids, axis=0)
    torch.manual_seed(0)
    model = TIGER(torch.as_tensor(ids), [8, 8, 4], dim=16, layers=1, heads=2)
    history = torch.as_tensor(rng.integers(-1, len(ids), (7, 20)))
    history[:, -1] = 3
    items, invalid = model.recommend(history, k=10, beam=12)
    assert invalid == 0
    assert ((items >= 0) & (items < len(ids))).all()
    assert all(len(set(row)) == 10 for row in items.tolist())  # distinct items
    # asking for more than exist returns every item once and -1 after
    few = TIGER(torch.as_tensor(ids[:5]), [8, 8, 4], dim=16, layers=1, heads=2)
    items, invalid = few.recommend(torch.full((2, 20), 1), k=8)
    assert invalid == 0 and sorted(items[0, :5].tolist()) == [0, 1, 2, 3, 4]
    assert (items[:, 5:] == -1).all()


# ---------------------------------------------------------------- the models learn


@pytest.fixture(scope="module")
def small():
    data = synthetic_catalog(num_users=600, num_items=150, per_user=(6, 14), seed=5)
    return data, build_splits(data)


def test_popularity_scores_by_training_counts(small):
    _, s = small
    pop = Popularity(torch.as_tensor(s.train_counts()))
    m, ranks = evaluate(pop, s.test)
    counts = s.train_counts()
    best = np.argsort(-counts, kind="stable")
    assert ranks[0] == int(np.flatnonzero(best == s.test.target[0])[0])
    assert 0 < m["recall@10"] < 1


def test_sasrec_and_the_parallel_decoder_beat_popularity(small):
    data, s = small
    pop, _ = evaluate(Popularity(torch.as_tensor(s.train_counts())), s.test)
    torch.manual_seed(0)
    sas = SASRec(s.num_items, dim=32, layers=1, heads=1, dropout=0.1)
    fit(sas, s.train, s.val, epochs=12, batch_size=128, lr=3e-3, patience=3, progress=False)
    m_sas, _ = evaluate(sas, s.test)
    # codes: 2 parallel codebooks of 16 from the item index (coarse and fine), unique pairs
    codes = torch.stack([torch.arange(s.num_items) // 16, torch.arange(s.num_items) % 16], 1)
    torch.manual_seed(0)
    par = ParallelDecoder(codes, 16, dim=32, layers=1, heads=1, dropout=0.1, id_embedding=True)
    fit(par, s.train, s.val, epochs=12, batch_size=128, lr=3e-3, patience=3, progress=False)
    m_par, _ = evaluate(par, s.test)
    assert m_sas["ndcg@10"] > pop["ndcg@10"], (m_sas, pop)
    assert m_par["ndcg@10"] > pop["ndcg@10"], (m_par, pop)
    # the parallel decoder's exact top-k is its full ranking
    par.eval()
    h = torch.from_numpy(s.test.history[:5])
    items, _ = par.topk(h, 10)
    want = torch.sort(par.scores(h), dim=1, descending=True, stable=True).indices[:, :10]
    assert torch.equal(items, want)


@pytest.mark.parametrize("k", [8, 300])
def test_parallel_decoder_keeps_its_codes_compact_and_ranks_exactly(k):
    gen = torch.Generator().manual_seed(k)
    codes = torch.randint(0, k, (50, 3), generator=gen)
    torch.manual_seed(0)
    model = ParallelDecoder(codes, k, dim=16, layers=1, heads=1, dropout=0.0).eval()
    assert model.codes.dtype == (torch.uint8 if k <= 256 else torch.int16)
    assert torch.equal(model.codes[:50].long(), codes)
    h = torch.randint(0, 50, (4, 6), generator=gen)
    h[0, :4] = -1  # left padding
    items, scores = model.topk(h, 7)
    want = torch.sort(model.scores(h), dim=1, descending=True, stable=True)
    assert torch.equal(items, want.indices[:, :7])
    assert torch.equal(scores, want.values[:, :7])  # both sum the codes in code order
    # a state saved with int64 codes (before they were stored compactly) loads
    again = ParallelDecoder(codes, k, dim=16, layers=1, heads=1, dropout=0.0).eval()
    again.load_state_dict({**model.state_dict(), "codes": model.codes.long()})
    assert again.codes.dtype == model.codes.dtype
    assert torch.equal(again.topk(h, 7)[0], items)


def test_item_softmax_loss_is_the_catalogue_cross_entropy_of_the_scores(small):
    _, s = small
    gen = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 8, (s.num_items, 3), generator=gen)
    torch.manual_seed(0)
    model = ParallelDecoder(codes, 8, dim=16, layers=1, heads=1, dropout=0.0, loss="items")
    model.eval()
    h, t = torch.from_numpy(s.train.history[:7]), torch.from_numpy(s.train.target[:7])
    logp = model.log_probs(h)  # (B, M, K)
    want = []
    for b in range(len(t)):  # by hand: item n scores sum_m logp[m, codes[n, m]]
        scores = torch.stack([logp[b, torch.arange(3), codes[n]].sum()
                              for n in range(s.num_items)])  # fmt: skip
        want.append(torch.logsumexp(scores, 0) - scores[t[b]])
    torch.testing.assert_close(model.loss(h, t), torch.stack(want).mean(), rtol=1e-5, atol=1e-5)
    model.loss_kind = "codes"  # the same heads under the per-code loss
    per_code = -logp.gather(2, codes[t][..., None]).squeeze(-1).sum(1).mean()
    torch.testing.assert_close(model.loss(h, t), per_code)
    with pytest.raises(ValueError, match="loss must be one of"):
        ParallelDecoder(codes, 8, loss="item")
    # it learns: ahead of popularity on the synthetic catalogue
    pop, _ = evaluate(Popularity(torch.as_tensor(s.train_counts())), s.test)
    coarse_fine = torch.stack([torch.arange(s.num_items) // 16, torch.arange(s.num_items) % 16], 1)
    torch.manual_seed(0)
    par = ParallelDecoder(coarse_fine, 16, dim=32, layers=1, heads=1, dropout=0.1, loss="items")
    fit(par, s.train, s.val, epochs=8, batch_size=128, lr=3e-3, patience=3, progress=False)
    m_par, _ = evaluate(par, s.test)
    assert m_par["ndcg@10"] > pop["ndcg@10"], (m_par, pop)


def test_tiger_learns_and_never_returns_an_invalid_item(small):
    _, s = small
    ids = np.c_[np.arange(s.num_items) // 16, np.arange(s.num_items) % 16]
    torch.manual_seed(0)
    model = TIGER(torch.as_tensor(ids), [16, 16], dim=32, layers=1, heads=2, dropout=0.1)
    result = fit(model, s.train, s.val, epochs=6, batch_size=128, lr=3e-3, patience=3,
                 progress=False, val_limit=200)  # fmt: skip
    m, _ = evaluate(model, s.test, beam=10)
    assert m["invalid_items"] == 0
    assert result.curve[-1]["loss"] < result.curve[0]["loss"]
    assert m["recall@10"] > 10 / s.num_items  # above a random list
