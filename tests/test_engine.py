"""The Rust engine against the numpy references, on fresh random inputs."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import moc_fast as mf

import reference as ref
from conftest import PYTHON

settings.register_profile("engine", deadline=None, max_examples=60)
settings.load_profile("engine")


def _data(seed: int, n: int, d: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, d), dtype=np.float32),
        rng.standard_normal((k, d), dtype=np.float32),
    )


def _check_optimal(x, cb, codes, dist, metric):
    """Each code is optimal up to float32 rounding, its score is reported, and where the best
    code is clear of the runner-up by more than rounding, it is exactly the reference's.

    The reported score comes from the expansion ‖x‖² + ‖c‖² - 2x·c (or x·c) in float32, so its
    error is relative to that row's scale, not to the (possibly tiny) distance itself."""
    s = ref.scores(x, cb, metric)
    sign = -1.0 if metric == "ip" else 1.0
    s = sign * s
    best = s.min(1)
    tol = 1e-4 * (1 + np.abs(best) + (x.astype(np.float64) ** 2).sum(1))
    chosen = s[np.arange(len(x)), codes]
    assert np.all(chosen - best <= tol)
    x2 = (x.astype(np.float64) ** 2).sum(1)
    c2 = (cb.astype(np.float64) ** 2).sum(1)[codes]
    scale = np.sqrt(x2 * c2) if metric == "ip" else x2 + c2
    err = np.abs(sign * dist - chosen)
    assert np.all(err <= 1e-4 * np.abs(chosen) + mf.TIE_RTOL * scale), (err / scale).max()
    if s.shape[1] > 1:
        second = np.partition(s, 1, axis=1)[:, 1]
        clear = second - best > 2 * tol
        np.testing.assert_array_equal(codes[clear], s.argmin(1)[clear])


@given(
    n=st.integers(1, 130),
    d=st.integers(1, 70),
    k=st.integers(1, 300),
    metric=st.sampled_from(["l2", "ip"]),
    seed=st.integers(0, 2**31),
)
def test_assign_matches_numpy(n, d, k, metric, seed):
    x, cb = _data(seed, n, d, k)
    codes, dist = mf.assign(x, cb, metric)
    assert codes.dtype == np.int64 and dist.dtype == np.float32
    assert codes.shape == dist.shape == (n,)
    _check_optimal(x, cb, codes, dist, metric)


@pytest.mark.parametrize(("n", "d", "k"), [(97, 384, 256), (50, 4096, 40), (300, 16, 5000)])
def test_assign_large_d_and_large_k(n, d, k):
    x, cb = _data(n + d + k, n, d, k)
    codes, dist = mf.assign(x, cb)
    _check_optimal(x, cb, codes, dist, "l2")


def test_ties_go_to_the_lowest_index():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((5, 8), dtype=np.float32)
    cb = np.concatenate([base, base, base])  # codes j, j+5, j+10 are identical
    x = base[rng.integers(0, 5, size=200)] + 0.01 * rng.standard_normal((200, 8), dtype=np.float32)
    codes, _ = mf.assign(x, cb)
    assert codes.max() < 5
    np.testing.assert_array_equal(codes, ref.assign(x, base)[0])


def test_results_do_not_depend_on_the_thread_count():
    x, cb = _data(2, 5000, 40, 333)
    one = mf.assign(x, cb, num_threads=1)
    two = mf.assign(x, cb, num_threads=2)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    km1 = mf.kmeans(x, 50, iters=5, num_threads=1)
    km2 = mf.kmeans(x, 50, iters=5, num_threads=2)
    np.testing.assert_array_equal(km1[0], km2[0])
    np.testing.assert_array_equal(km1[1], km2[1])


@given(
    n=st.integers(1, 80),
    m=st.integers(1, 5),
    d=st.integers(1, 20),
    k=st.integers(1, 70),
    shared=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_assign_multi_equals_one_assign_per_codebook(n, m, d, k, shared, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d) if shared else (n, m, d), dtype=np.float32)
    cbs = rng.standard_normal((m, k, d), dtype=np.float32)
    codes = mf.assign_multi(x, cbs)
    assert codes.shape == (n, m)
    for j in range(m):
        xj = x if shared else x[:, j]
        np.testing.assert_array_equal(codes[:, j], mf.assign(xj, cbs[j])[0])


@given(
    n=st.integers(1, 80),
    levels=st.integers(1, 4),
    d=st.integers(1, 24),
    k=st.integers(1, 40),
    seed=st.integers(0, 2**31),
)
def test_assign_residual_matches_numpy(n, levels, d, k, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    cbs = rng.standard_normal((levels, k, d), dtype=np.float32) / np.arange(1, levels + 1)[
        :, None, None
    ].astype(np.float32)
    codes, res = mf.assign_residual(x, cbs)
    assert codes.shape == (n, levels) and res.shape == (n, d)
    # The residual is what the chosen codewords leave; each level's code is optimal for its input.
    recon = sum(cbs[lv][codes[:, lv]] for lv in range(levels))
    np.testing.assert_allclose(res, x - recon, atol=1e-5)
    inp = x.copy()
    for lv in range(levels):
        _check_optimal(
            inp,
            cbs[lv],
            codes[:, lv],
            ref.scores(inp, cbs[lv], "l2")[np.arange(n), codes[:, lv]].astype(np.float32),
            "l2",
        )
        inp = inp - cbs[lv][codes[:, lv]]


def test_kmeans_beats_or_matches_textbook_lloyd():
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((20, 16)) * 4
    x = (centers[rng.integers(0, 20, 3000)] + rng.standard_normal((3000, 16))).astype(np.float32)
    cent, labels, inertia = mf.kmeans(x, 20, iters=30, seed=1)
    assert cent.shape == (20, 16) and labels.shape == (3000,)
    # The reported inertia and labels are those of the returned centroids.
    codes, dist = ref.assign(x, cent)
    assert mf.within_tie(x, cent, labels, codes).all()
    assert inertia == pytest.approx(dist.sum(), rel=1e-4)
    # At least as good as textbook Lloyd from random rows (plain k-means++ seeding can still
    # merge two of these blobs, so the generating centres are not a fair bar).
    ref_inertias = [
        ref.lloyd(x, x[np.random.default_rng(s).choice(3000, 20, replace=False)], 30)[1]
        for s in range(3)
    ]
    assert inertia <= np.median(ref_inertias) * 1.001


def test_kmeans_is_reproducible_for_a_seed_and_varies_with_it():
    x, _ = _data(4, 2000, 8, 1)
    a = mf.kmeans(x, 30, seed=5)
    b = mf.kmeans(x, 30, seed=5)
    c = mf.kmeans(x, 30, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_kmeans_random_init_and_spherical():
    x, _ = _data(5, 1500, 12, 1)
    cent, labels, _ = mf.kmeans(x, 16, init="random")
    assert len(np.unique(labels)) == 16
    cent, labels, inertia = mf.kmeans(x, 16, metric="ip")
    np.testing.assert_allclose(np.linalg.norm(cent, axis=1), 1.0, atol=1e-5)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert mf.within_tie(xn, cent, labels, ref.assign(xn, cent, "ip")[0], "ip").all()
    assert inertia == pytest.approx((1 - (xn * cent[labels]).sum(1)).sum(), rel=1e-3)


def test_rq_kmeans_codes_agree_with_assign_residual():
    x, _ = _data(6, 1200, 10, 1)
    cbs, codes, inertia = mf.rq_kmeans(x, levels=3, k=16, iters=10)
    assert cbs.shape == (3, 16, 10) and codes.shape == (1200, 3)
    again, res = mf.assign_residual(x, cbs)
    np.testing.assert_array_equal(codes, again)
    assert inertia == pytest.approx(float((res.astype(np.float64) ** 2).sum()), rel=1e-3)
    # Each level explains more.
    one = mf.rq_kmeans(x, levels=1, k=16, iters=10)[2]
    assert inertia < one


@given(
    codes=st.lists(st.lists(st.integers(0, 255), min_size=3, max_size=3), max_size=50),
)
def test_pack_unpack_round_trip(codes):
    arr = np.array(codes, dtype=np.int64).reshape(-1, 3)
    ids = mf.pack_codes(arr, 8)
    assert ids.dtype == np.uint64
    np.testing.assert_array_equal(mf.unpack_codes(ids, 3, 8), arr)
    # Sorting the IDs sorts the tuples lexicographically.
    order = np.argsort(ids, kind="stable")
    assert [tuple(r) for r in arr[order]] == sorted(map(tuple, arr.tolist()))


@given(codes=st.lists(st.lists(st.integers(0, 3), min_size=2, max_size=2), min_size=1, max_size=80))
def test_resolve_collisions_matches_reference_and_makes_rows_unique(codes):
    arr = np.array(codes, dtype=np.int64)
    out = mf.resolve_collisions(arr)
    np.testing.assert_array_equal(out, ref.resolve_collisions(arr))
    assert len({tuple(r) for r in out.tolist()}) == len(arr)


def test_code_stats_matches_numpy():
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 8, size=(500, 3))
    codes[:, 2] = 0  # a collapsed codebook
    st_ = mf.code_stats(codes, 16)
    for j in range(3):
        np.testing.assert_array_equal(st_["histogram"][j], np.bincount(codes[:, j], minlength=16))
    np.testing.assert_allclose(st_["utilization"], [0.5, 0.5, 1 / 16])
    np.testing.assert_allclose(st_["perplexity"][2], 1.0)
    assert st_["perplexity"][0] == pytest.approx(8, rel=0.05)
    unique = len({tuple(r) for r in codes.tolist()})
    assert st_["unique"] == unique
    assert st_["collision_rate"] == pytest.approx(1 - unique / 500)


def _topk_reference(logp, codes, k):
    """Item n scores Σ_m logp[b, m, codes[n, m]] summed in code order (float32); the k best,
    ties to the lower index (a stable sort)."""
    b, m, _ = logp.shape
    scores = np.zeros((b, len(codes)), np.float32)
    for j in range(m):
        scores += logp[:, j, codes[:, j]]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, 1)


@given(
    n=st.integers(1, 3000),
    m=st.integers(1, 7),
    kk=st.sampled_from([2, 3, 256, 300]),
    k=st.integers(1, 40),
    coarse=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_topk_codes_equals_a_stable_full_sort(n, m, kk, k, coarse, seed):
    rng = np.random.default_rng(seed)
    logp = rng.standard_normal((2, m, kk)).astype(np.float32)
    if coarse:  # few distinct values: many exact ties
        logp = np.round(logp * 2) / 2
    logp[0, 0, 0] = -np.inf  # items with this code can never score above the rest
    codes = rng.integers(0, kk, size=(n, m))
    want_i, want_s = _topk_reference(logp, codes, k)
    for dtype in [np.uint16, np.int32, np.int64] + ([np.uint8] if kk <= 256 else []):
        for threads in (1, 2):
            items, scores = mf.topk_codes(logp, codes.astype(dtype), k, num_threads=threads)
            np.testing.assert_array_equal(items, want_i)
            np.testing.assert_array_equal(scores, want_s)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_topk_codes_refuses_nan_and_plus_inf_log_probabilities(bad):
    # An item with a +inf and a -inf term would score NaN, which ranks first on aarch64 and
    # last on x86 (the sign of the NaN the hardware makes), so +inf is refused with NaN.
    logp = np.zeros((1, 2, 4), np.float32)
    logp[0, 1, 2] = bad
    with pytest.raises(ValueError, match=r"logp must not hold NaN or \+inf"):
        mf.topk_codes(logp, np.array([[0, 1], [1, 2]]), 1)


def test_topk_codes_rejects_out_of_range_codes_naming_the_item():
    with pytest.raises(ValueError, match="item 1 codebook 0"):
        mf.topk_codes(np.zeros((1, 2, 4), np.float32), np.array([[0, 1], [4, 0]], np.uint8), 1)


def test_empty_inputs_give_empty_results():
    cb = np.ones((4, 3), np.float32)
    codes, dist = mf.assign(np.zeros((0, 3), np.float32), cb)
    assert codes.shape == dist.shape == (0,)
    assert mf.assign_multi(
        np.zeros((0, 2, 3), np.float32), np.ones((2, 4, 3), np.float32)
    ).shape == (0, 2)
    assert mf.pack_codes(np.zeros((0, 2), np.int64), 8).shape == (0,)


def test_torch_cpu_tensors_and_conversions_are_accepted():
    torch = pytest.importorskip("torch")
    x, cb = _data(8, 64, 6, 10)
    want = mf.assign(x, cb)[0]
    np.testing.assert_array_equal(mf.assign(torch.from_numpy(x), torch.from_numpy(cb))[0], want)
    np.testing.assert_array_equal(mf.assign(x.astype(np.float64), cb)[0], want)
    strided = np.asfortranarray(x)
    np.testing.assert_array_equal(mf.assign(strided, cb)[0], want)


BAD_INPUTS = [
    (
        lambda: mf.assign(np.ones(3, np.float32), np.ones((2, 3), np.float32)),
        ValueError,
        "x must be 2-D",
    ),
    (
        lambda: mf.assign(np.ones((2, 3), np.float32), np.ones((2, 4), np.float32)),
        ValueError,
        "same dimension",
    ),
    (
        lambda: mf.assign(np.ones((2, 3), np.float32), np.ones((0, 3), np.float32)),
        ValueError,
        "K = 0",
    ),
    (
        lambda: mf.assign(np.ones((2, 3), np.int32), np.ones((2, 3), np.float32)),
        TypeError,
        "float32",
    ),
    (
        lambda: mf.assign(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32), "cos"),
        ValueError,
        "metric",
    ),
    (
        lambda: mf.assign(
            np.array([[0, 1], [np.nan, 0], [np.inf, 1]], np.float32), np.ones((1, 2), np.float32)
        ),
        ValueError,
        "row 1",
    ),
    (
        lambda: mf.assign(np.ones((1, 2), np.float32), np.array([[np.inf, 0]], np.float32)),
        ValueError,
        "codebook must be finite",
    ),
    (
        lambda: mf.assign_multi(np.ones((2, 3, 4), np.float32), np.ones((2, 5, 4), np.float32)),
        ValueError,
        "(N, M=2, d=4)",
    ),
    (
        lambda: mf.assign_residual(np.ones((2, 3), np.float32), np.ones((2, 5, 4), np.float32)),
        ValueError,
        "dimension",
    ),
    (lambda: mf.kmeans(np.ones((3, 2), np.float32), 5), ValueError, "at least k = 5"),
    (lambda: mf.kmeans(np.ones((3, 2), np.float32), 0), ValueError, "k must be"),
    (lambda: mf.kmeans(np.ones((9, 2), np.float32), 2, init="smart"), ValueError, "init"),
    (lambda: mf.pack_codes(np.array([[1, 256]]), 8), ValueError, "codes[0, 1] = 256"),
    (lambda: mf.pack_codes(np.ones((1, 5), np.int64), 13), ValueError, "bits * m"),
    (lambda: mf.pack_codes(np.ones((1, 2), np.float32), 8), TypeError, "integers"),
    (lambda: mf.unpack_codes(np.array([1 << 20], np.uint64), 2, 8), ValueError, "bits set above"),
    (lambda: mf.code_stats(np.array([[0, 9]]), 8), ValueError, "codes[0, 1] = 9"),
    (lambda: mf.code_stats(np.array([[0, 1]]), 10**13), ValueError, "codebook_size"),
    (lambda: mf.code_stats(np.array([[0, 1]]), 2**62), ValueError, "codebook_size"),
    (lambda: mf.rq_kmeans(np.ones((3, 2), np.float32), 2**46, 2), ValueError, "levels"),
    (lambda: mf.unpack_codes(np.ones(2, np.uint64), 2**63, 1), ValueError, "m must be"),
    (lambda: mf.pack_codes(np.ones((1, 2), np.int64), -1), ValueError, "bits must be"),
    (lambda: mf.kmeans(np.ones((3, 2), np.float32), 2, iters=2**70), ValueError, "iters"),
    (
        lambda: mf.assign(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32),
                          num_threads=2**62),  # fmt: skip
        ValueError,
        "num_threads",
    ),
    (
        lambda: mf.assign(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32), num_threads=0),
        ValueError,
        "num_threads",
    ),
]


@pytest.mark.parametrize(("call", "exc", "message"), BAD_INPUTS)
def test_bad_input_raises_a_clear_error(call, exc, message):
    with pytest.raises(exc, match=None) as info:
        call()
    assert message in str(info.value)


# Scalars from ordinary to absurd: every huge value needs more than the engine's 2**47-byte
# allocation ceiling, so the expected outcome does not depend on the machine's memory.
_SIZES = st.one_of(
    st.integers(-3, 6),
    st.sampled_from([2**46, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**13, 10**30]),
)


def _engine_calls(k, m, bits, levels, iters, threads):
    x = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    codes = np.array([[0, 1], [1, 0], [0, 1]])
    nt = threads if threads != 0 else None
    return [
        lambda: mf.kmeans(x, k, iters=iters % 50, num_threads=nt),
        lambda: mf.kmeans(x, 2, iters=iters, num_threads=nt),  # stops once labels settle
        lambda: mf.rq_kmeans(x, levels, k, iters=3, num_threads=nt),
        lambda: mf.pack_codes(codes, bits),
        lambda: mf.unpack_codes(np.arange(3, dtype=np.uint64), m, bits),
        lambda: mf.code_stats(codes, k),
        lambda: mf.assign(x, x[:2], num_threads=nt),
        lambda: mf.assign_residual(x, x[None, :2], num_threads=nt),
    ]


@settings(max_examples=60, deadline=None)
@given(k=_SIZES, m=_SIZES, bits=_SIZES, levels=_SIZES, iters=_SIZES, threads=_SIZES)
def test_extreme_sizes_raise_value_errors_never_a_panic(k, m, bits, levels, iters, threads):
    # A Rust panic surfaces as PanicException (a BaseException: it would fail this test), an
    # abort kills the process; every refusal must be a ValueError or TypeError with a message.
    for call in _engine_calls(k, m, bits, levels, iters, threads):
        try:
            call()
        except (ValueError, TypeError) as exc:
            assert str(exc)


@settings(max_examples=60, deadline=None)
@given(k=_SIZES, m=_SIZES, bits=_SIZES, levels=_SIZES, threads=_SIZES)
def test_the_native_boundary_refuses_extreme_sizes_without_panicking(k, m, bits, levels, threads):
    # The same, one layer down: the Rust functions themselves, past the Python validation.
    # Integers that do not fit the argument's Rust type are PyO3's OverflowError.
    from moc_fast import _native

    x = np.random.default_rng(1).normal(size=(5, 2)).astype(np.float32)
    codes = np.array([[0, 1], [1, 0]], np.int64)
    threads = abs(threads)
    calls = [
        lambda: _native.kmeans(x, k, 2, 0, "k-means++", "l2", threads),
        lambda: _native.rq_kmeans(x, levels, k, 2, 0, "random", threads),
        lambda: _native.pack_codes(codes, bits),
        lambda: _native.unpack_codes(np.arange(2, dtype=np.uint64), m, bits),
        lambda: _native.code_histograms(codes, k),
        lambda: _native.assign(x, x, "l2", threads),
    ]
    for call in calls:
        try:
            call()
        except (ValueError, TypeError, OverflowError) as exc:
            assert str(exc)


def test_gpu_tensors_are_rejected_clearly():
    torch = pytest.importorskip("torch")
    x = torch.ones(2, 3, device="meta")
    with pytest.raises(TypeError, match="CPU tensor"):
        mf.assign(x, np.ones((2, 3), np.float32))


def test_calls_from_several_python_threads_at_once():
    x, cb = _data(9, 20000, 32, 256)
    want = mf.assign(x, cb)[0]
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work():
        try:
            for _ in range(3):
                results.append(mf.assign(x, cb)[0])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert len(results) == 12
    for r in results:
        np.testing.assert_array_equal(r, want)


def _child_assign(queue):
    x, cb = _data(10, 500, 8, 16)
    queue.put(mf.assign(x, cb)[0].tolist())


def test_engine_works_in_a_forked_child_after_use_in_the_parent():
    x, cb = _data(10, 500, 8, 16)
    want = mf.assign(x, cb)[0].tolist()  # the parent's pool now exists
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_assign, args=(queue,))
    proc.start()
    try:
        got = queue.get(timeout=60)  # a deadlocked child raises queue.Empty here
        proc.join(timeout=60)
    finally:
        proc.kill()
    assert proc.exitcode == 0
    assert got == want


def test_forked_child_defaults_to_one_thread_even_if_the_parent_never_used_the_engine():
    # A fresh interpreter that imports moc_fast and forks before any engine call.
    code = """
import multiprocessing as mp, os
os.environ.pop("MOC_FAST_NUM_THREADS", None)
import moc_fast as mf
def child(q):
    q.put(mf.default_num_threads())
ctx = mp.get_context("fork")
q = ctx.Queue()
p = ctx.Process(target=child, args=(q,))
p.start()
print(q.get(timeout=60), mf.default_num_threads())
p.join(timeout=60)
"""
    env = {k: v for k, v in os.environ.items() if k != "MOC_FAST_NUM_THREADS"}
    run = subprocess.run([*PYTHON, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    child, parent = (int(v) for v in run.stdout.split())
    assert child == 1 and parent == os.cpu_count()


@pytest.mark.parametrize("iters", [0, 1, 7])
def test_kmeans_from_given_centroids_is_textbook_lloyd(iters):
    rng = np.random.default_rng(iters)
    x = rng.standard_normal((2000, 12)).astype(np.float32)
    init = x[rng.choice(2000, 16, replace=False)]
    cent, labels, inertia = mf.kmeans(x, 16, iters=iters, init=init)
    want, want_inertia = ref.lloyd(x, init, iters)
    np.testing.assert_allclose(cent, want, rtol=1e-4, atol=1e-4)
    assert inertia == pytest.approx(want_inertia, rel=1e-4)
    with pytest.raises(ValueError, match=r"init centroids must have shape \(k, d\)"):
        mf.kmeans(x, 16, init=init[:, :5])


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_engine_and_torch_codes_agree_except_on_near_ties_at_a_million_rows(metric):
    """The engine and the torch path (addmm + argmin, fp32) round differently, so on near-ties
    they may pick different codewords; everywhere else they must agree (the tie contract,
    `mf.within_tie`). Half the codewords are near-twins of the other half, so near-ties are
    everywhere (measured: tens of thousands of L2 disagreements at 1M rows)."""
    torch = pytest.importorskip("torch")

    rng = np.random.default_rng(1 if metric == "l2" else 2)
    x = rng.standard_normal((1_000_000, 32), dtype=np.float32)
    base = rng.standard_normal((128, 32), dtype=np.float32)
    twins = base + 2e-6 * rng.standard_normal((128, 32), dtype=np.float32)
    c = np.concatenate([base, twins]).astype(np.float32)
    ours = mf.assign(x, c, metric=metric)[0]
    xt, ct = torch.from_numpy(x), torch.from_numpy(c)
    theirs = np.empty_like(ours)
    for s in range(0, len(x), 65536):  # chunked: never the whole N x K matrix
        if metric == "l2":
            score = torch.addmm((ct * ct).sum(1), xt[s : s + 65536], ct.T, alpha=-2)
        else:
            score = -(xt[s : s + 65536] @ ct.T)
        theirs[s : s + 65536] = score.argmin(1).numpy()
    diff = np.flatnonzero(ours != theirs)
    assert np.all(ours[diff] % 128 == theirs[diff] % 128)  # only ever a codeword's twin
    assert mf.within_tie(x[diff], c, ours[diff], theirs[diff], metric).all()


# ---------------------------------------------------------------- kernels and the tie contract

KERNEL_PROBE = """
import json, sys, numpy as np, moc_fast as mf
for i, metric in enumerate(json.loads(sys.argv[1])):
    x, c = np.load(f"{sys.argv[2]}/x{i}.npy"), np.load(f"{sys.argv[2]}/c{i}.npy")
    np.save(f"{sys.argv[2]}/{mf.kernel_name()}{i}.npy", mf.assign(x, c, metric)[0])
print(json.dumps(mf.available_kernels()))
"""

# Awkward shapes: 1 row, rows and codes off every block size, packed and in-place rows, a d
# split into several k-blocks, large K; half the codewords are near-twins of the others.
PROBE_SHAPES = [(1, 5, 2, "l2"), (203, 33, 98, "l2"), (157, 32, 1030, "ip"), (50, 384, 256, "l2"),
                (13, 1500, 40, "ip"), (7, 4096, 34, "l2")]  # fmt: skip


def _probe(kernel: str, folder) -> list[str]:
    """Run the probe with `kernel` forced; it writes `{kernel}{i}.npy` beside the inputs."""
    env = {**os.environ, "MOC_FAST_KERNEL": kernel}
    metrics = json.dumps([shape[3] for shape in PROBE_SHAPES])
    run = subprocess.run([*PYTHON, "-c", KERNEL_PROBE, metrics, str(folder)],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_every_kernel_this_cpu_runs_keeps_the_tie_contract(tmp_path):
    """Each kernel, forced by MOC_FAST_KERNEL in its own process, picks codes that are the
    float64 reference's or tied with them within TIE_RTOL; the SIMD kernels (one FMA per term
    in one order) agree with each other bit for bit at every d."""
    kernels = mf.available_kernels()
    assert kernels[-1] == "portable" and mf.kernel_name() in kernels
    data = []
    for i, (n, d, k, _) in enumerate(PROBE_SHAPES):
        rng = np.random.default_rng(i)
        x = rng.standard_normal((n, d), dtype=np.float32)
        base = rng.standard_normal((k // 2, d), dtype=np.float32)
        c = np.concatenate([base, base + 1e-6 * rng.standard_normal(base.shape, np.float32)])
        np.save(tmp_path / f"x{i}.npy", x)
        np.save(tmp_path / f"c{i}.npy", c)
        data.append((x, c))
    for kernel in kernels:
        assert _probe(kernel, tmp_path) == kernels
    for i, (x, c) in enumerate(data):
        metric = PROBE_SHAPES[i][3]
        want = ref.assign(x, c, metric)[0]
        got = {kernel: np.load(tmp_path / f"{kernel}{i}.npy") for kernel in kernels}
        for kernel, codes in got.items():
            assert mf.within_tie(x, c, codes, want, metric).all(), (kernel, PROBE_SHAPES[i])
        simd = [codes for kernel, codes in got.items() if kernel != "portable"]
        for other in simd[1:]:
            np.testing.assert_array_equal(other, simd[0])


def test_forcing_a_kernel_this_cpu_cannot_run_is_a_clear_error(tmp_path):
    missing = [k for k in ("avx512", "avx2", "neon") if k not in mf.available_kernels()]
    for kernel, message in [(missing[0], "which this CPU cannot run"), ("sse9", "must be one of")]:
        env = {**os.environ, "MOC_FAST_KERNEL": kernel}
        code = "import moc_fast as mf, numpy as np; mf.assign(np.ones((2, 3)), np.ones((4, 3)))"
        run = subprocess.run([*PYTHON, "-c", code], capture_output=True, text=True, env=env)
        assert run.returncode == 1
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith("ValueError: MOC_FAST_KERNEL") and message in last, last


def test_within_tie_accepts_near_ties_and_rejects_clear_differences():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 16), dtype=np.float32)
    c = rng.standard_normal((64, 16), dtype=np.float32)
    best = ref.assign(x, c)[0]
    assert mf.within_tie(x, c, best, best).all()
    second = np.argsort(ref.scores(x, c, "l2"), axis=1)[:, 1]
    assert not mf.within_tie(x, c, best, second).any()  # random codewords are never that close
    twins = np.concatenate([c, c + 1e-7 * rng.standard_normal(c.shape, dtype=np.float32)])
    for metric in ("l2", "ip"):
        assert mf.within_tie(x, twins, best, best + 64, metric).all()
    with pytest.raises(ValueError, match="codes_b must lie in"):
        mf.within_tie(x, c, best, best + 64)


def test_dir_lists_the_lazily_loaded_names():
    names = dir(mf)
    assert {"MoCIndexer", "load_indexer", "MoCEmbedding", "CTRModel", "assign"} <= set(names)
