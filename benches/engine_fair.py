"""The engine against FAISS, torch and numpy, measured so that a FAISS maintainer would accept it.

    python benches/engine_fair.py                 # prints the tables, rewrites RESULTS.md's
                                                  # engine section (between its markers)
    python benches/engine_fair.py --no-write      # print only
    python benches/engine_fair.py --kernels avx2 --shapes 32x256,4096x256 --threads 1 \
        --rounds 7 --assign-only                  # one focused check, printed, never written

- Every kernel this CPU runs (`moc_fast.available_kernels()`, forced with `MOC_FAST_KERNEL`)
  is measured against FAISS at the matching SIMD level: `FAISS_SIMD_LEVEL` sets the level of
  faiss-cpu's dynamic dispatch (1.14+; `FAISS_OPT_LEVEL` picks the build of older wheels that
  ship several), and `OPENBLAS_CORETYPE` the kernel of its bundled OpenBLAS (SkylakeX /
  Haswell / Prescott), which FAISS uses for sgemm when D is large. The level FAISS reports
  using is checked in each worker. Without it the
  bundled OpenBLAS can misdetect a CPU it is older than (it chose Prescott, plain SSE3, on a
  Sapphire Rapids VM), which would hand moc_fast an unfair win. The sgemm roof is measured per
  level (numpy's OpenBLAS with the same core type).

- Every library runs in its own process (FAISS's and torch's OpenMP pools never meet), with
  every thread pool pinned: `OMP_NUM_THREADS`/`MKL_NUM_THREADS`/`OPENBLAS_NUM_THREADS`,
  `OMP_WAIT_POLICY=PASSIVE`, threadpoolctl's limits, `faiss.omp_set_num_threads`,
  `torch.set_num_threads`, `MOC_FAST_NUM_THREADS` — at 1 thread and at all cores.
- The machine's sgemm roof (numpy's and torch's BLAS, 2048³) is measured in the same run, at
  each thread count, and each library's GFLOP/s is printed beside it as a share of the roof:
  a peer below half the roof on a GEMM-shaped problem (D ≥ 384) is flagged as a harness bug.
- k-means: moc_fast and `faiss.Kmeans` start from the *same* initial centroids and run the same
  iterations (no subsampling); the inertia difference is printed as measured.
- Torch and numpy baselines are chunked (never the whole N × K matrix).
- Data is regenerated from a seed in each process: every library sees the same numbers, and
  every library's codes are compared with moc_fast's.
Times are the best of 5 calls after a warm-up (for `assign`, the best over `--rounds`
interleaved rounds of that); ratios are other / moc_fast (> 1: moc_fast faster). These VMs
differ between sessions: compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHAPES = [(32, 256), (32, 1024), (64, 1024), (384, 256), (4096, 256)]
KMEANS_SHAPES = [(32, 256), (64, 1024)]
ROWS = 100_000
CHUNK = 8192
# Per moc_fast kernel: FAISS's build and the OpenBLAS kernel of the same SIMD level.
LEVELS = {
    "avx512": {"FAISS_SIMD_LEVEL": "AVX512", "FAISS_OPT_LEVEL": "AVX512",
               "OPENBLAS_CORETYPE": "SkylakeX"},
    "avx2": {"FAISS_SIMD_LEVEL": "AVX2", "FAISS_OPT_LEVEL": "AVX2", "OPENBLAS_CORETYPE": "Haswell"},
    "portable": {"FAISS_SIMD_LEVEL": "NONE", "FAISS_OPT_LEVEL": "generic",
                 "OPENBLAS_CORETYPE": "Prescott"},
}
# The search inside MoC encoding: 7 codebooks of 256 codewords over 32-d latents.
MOC_ENCODE = {"m": 7, "d": 32, "k": 256, "n": 200_000}


def rows_for(d: int) -> int:
    return 10_000 if d >= 4096 else ROWS


def data(n: int, d: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n * 1_000_003 + d * 1009 + k)
    return (rng.standard_normal((n, d), dtype=np.float32),
            rng.standard_normal((k, d), dtype=np.float32))  # fmt: skip


def best_of(fn, reps: int = 5) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


# ---------------------------------------------------------------------- workers (one process)


def _pin(lib: str, threads: int):
    from threadpoolctl import threadpool_limits

    limits = threadpool_limits(threads)  # BLAS and OpenMP pools loaded so far
    if lib == "faiss":
        import faiss

        faiss.omp_set_num_threads(threads)
    if lib == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
    return limits


def _assign_fn(lib: str, x: np.ndarray, c: np.ndarray):
    if lib == "moc_fast":
        import moc_fast as mf

        return lambda: mf.assign(x, c)[0]
    if lib == "faiss":
        import faiss

        def run():
            index = faiss.IndexFlatL2(c.shape[1])
            index.add(c)
            return index.search(x, 1)[1][:, 0]

        return run
    if lib == "torch":
        import torch

        xt, ct = torch.from_numpy(x), torch.from_numpy(c)
        norms = (ct * ct).sum(1)

        def run():
            out = torch.empty(len(x), dtype=torch.int64)
            for s in range(0, len(x), CHUNK):
                out[s : s + CHUNK] = torch.addmm(norms, xt[s : s + CHUNK], ct.T, alpha=-2).argmin(1)
            return out.numpy()

        return run
    norms = (c * c).sum(1)

    def run():
        out = np.empty(len(x), dtype=np.int64)
        for s in range(0, len(x), CHUNK):
            out[s : s + CHUNK] = (norms - 2 * x[s : s + CHUNK] @ c.T).argmin(1)
        return out

    return run


def worker(task: dict) -> dict:
    lib, threads = task["lib"], task["threads"]
    _pin(lib, threads)
    if task["kind"] == "roof":
        n = 2048
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        if lib == "torch":
            import torch

            at = torch.from_numpy(a)
            t, _ = best_of(lambda: at @ at, 3)
        else:
            t, _ = best_of(lambda: a @ a, 3)
        return {"gflops": 2 * n**3 / t / 1e9}
    if lib == "moc_fast":
        import moc_fast as mf

        assert mf.kernel_name() == task["kernel"], (mf.kernel_name(), task["kernel"])
    if lib == "faiss":
        import faiss

        want = LEVELS[task["kernel"]]["FAISS_SIMD_LEVEL"]
        if hasattr(faiss, "SIMDConfig") and faiss.SIMDConfig.get_level_name() != want:
            raise RuntimeError(f"FAISS runs {faiss.SIMDConfig.get_level_name()}, not {want}")
    d, k = task["d"], task["k"]
    if task["kind"] == "moc_encode":
        import moc_fast as mf

        rng = np.random.default_rng(3)
        z = rng.standard_normal((task["n"], task["m"], d), dtype=np.float32)
        cbs = rng.standard_normal((task["m"], k, d), dtype=np.float32)
        t, _ = best_of(lambda: mf.assign_multi(z, cbs))
        return {"seconds": t, "items_per_s": task["n"] / t}
    if task["kind"] == "assign":
        x, c = data(task["n"], d, k)
        t, codes = best_of(_assign_fn(lib, x, c))
        np.save(task["codes_path"], np.asarray(codes, dtype=np.int64))
        return {"seconds": t, "gflops": 2 * task["n"] * d * k / t / 1e9}
    x, _ = data(task["n"], d, 1)
    init = x[np.random.default_rng(7).choice(len(x), k, replace=False)].copy()
    iters = task["iters"]
    if lib == "faiss":
        import faiss

        def run():
            km = faiss.Kmeans(d, k, niter=iters, seed=1, max_points_per_centroid=10**9)
            km.train(x, init_centroids=init)
            return km.centroids, iters

    else:
        from moc_fast import _native

        def run():
            cent, _, _, done = _native.kmeans_from(x, init, iters, "l2", threads)
            return cent, done

    t, (centroids, done) = best_of(run, 3)
    np.save(task["codes_path"], np.asarray(centroids, dtype=np.float32))
    return {"seconds": t, "iterations": int(done)}


# ---------------------------------------------------------------------- the parent


def run_worker(task: dict) -> dict:
    """Run `task` in a fresh process pinned to its threads and to its kernel's SIMD level."""
    threads = str(task["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "OPENBLAS_NUM_THREADS": threads, "OMP_WAIT_POLICY": "PASSIVE",
           "MOC_FAST_NUM_THREADS": threads, "MOC_FAST_KERNEL": task["kernel"],
           **LEVELS[task["kernel"]]}  # fmt: skip
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(task)],
                          capture_output=True, text=True, env=env)  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"worker {task} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def versions() -> str:
    code = ("import numpy, faiss, torch, moc_fast, threadpoolctl, json;"
            "print(json.dumps({m.__name__: m.__version__ for m in "
            "(numpy, faiss, torch, moc_fast, threadpoolctl)}))")  # fmt: skip
    v = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                  text=True, check=True).stdout)  # fmt: skip
    return ", ".join(f"{k} {val}" for k, val in v.items())


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.*)", text).group(1)
        flags = set(re.search(r"flags\s*:\s*(.*)", text).group(1).split())
        simd = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl")
                if f in flags]  # fmt: skip
        cpu += f" (SIMD flags: {' '.join(simd)})"
    except (OSError, AttributeError):
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=HERE, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=HERE).stdout.strip()  # fmt: skip
        return out + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


def measure(thread_counts: list[int], rounds: int = 3, log=print, only: list[str] | None = None,
            shapes: list[tuple[int, int]] | None = None, assign_only: bool = False) -> str:
    """Every kernel (or those in `only`) against FAISS at its level; torch and numpy against
    the default kernel. `assign` (and the roof) run every worker `rounds` times, interleaved,
    and keep each one's best: on a shared VM a noisy window then costs one library one round,
    not the comparison."""
    import moc_fast as mf

    kernels = [k for k in mf.available_kernels() if k in LEVELS and (not only or k in only)]
    if not kernels:
        raise SystemExit(f"--kernels {only}: this CPU runs {mf.available_kernels()}")
    best = kernels[0]
    lines = [
        f"`python benches/engine_fair.py` on {machine()}, {date.today().isoformat()}, commit "
        f"{commit()}; kernels {', '.join(f'`{k}`' for k in kernels)} (default `{best}`); "
        f"`assign`: best of {rounds} interleaved rounds of best-of-5 per library. "
        f"{versions()}. FAISS and numpy's OpenBLAS run at each kernel's level: "
        + "; ".join(f"`{k}`: " + ", ".join(f"{n}={v}" for n, v in LEVELS[k].items())
                    for k in kernels) + ".",
        "",
    ]  # fmt: skip
    tmp = Path(tempfile.mkdtemp())
    for threads in thread_counts:
        plural = "s" if threads > 1 else ""
        roof = dict.fromkeys(kernels, 0.0)
        for _ in range(rounds):  # the roof is as noisy as the rest: best of the rounds too
            for kn in kernels:
                task = {"kind": "roof", "lib": "numpy", "threads": threads, "kernel": kn}
                roof[kn] = max(roof[kn], run_worker(task)["gflops"])
        log(f"{threads} thread(s): sgemm roof per level {roof}")
        lines += [f"### assign, {threads} thread{plural}", "",
                  "sgemm roof (numpy, 2048³) per level in this run: "
                  + ", ".join(f"`{kn}` {g:.0f} GFLOP/s" for kn, g in roof.items()) + ".", "",
                  "| (D, K) | N | library | level | best s | other / moc_fast at its level "
                  "| GFLOP/s | % of level's roof | codes within tie of moc_fast |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for d, k in shapes or SHAPES:
            n = rows_for(d)
            x, c = data(n, d, k)
            runs = [(kn, "moc_fast") for kn in kernels] + [(kn, "faiss") for kn in kernels]
            runs += [(best, "torch"), (best, "numpy")]
            res = {}
            for _ in range(rounds):  # interleaved: each library's best comes from several windows
                for kn, lib in runs:
                    path = tmp / f"{lib}-{kn}-{d}-{k}-{threads}.npy"
                    task = {"kind": "assign", "lib": lib, "threads": threads, "d": d, "k": k,
                            "n": n, "kernel": kn, "codes_path": str(path)}  # fmt: skip
                    r = run_worker(task)
                    if (kn, lib) not in res or r["seconds"] < res[kn, lib]["seconds"]:
                        res[kn, lib] = {**r, "codes": np.load(path)}
            for kn, lib in runs:
                r, base = res[kn, lib], res[kn, "moc_fast"]
                pct = 100 * r["gflops"] / roof[kn]
                flag = " ⚠ below half the roof" if d >= 384 and pct < 50 else ""
                agree = float(mf.within_tie(x, c, r["codes"], base["codes"]).mean())
                lines.append(f"| ({d}, {k}) | {n:,} | {lib} | {kn} | {r['seconds']:.4f} | "
                             f"{r['seconds'] / base['seconds']:.2f}x | {r['gflops']:.0f} | "
                             f"{pct:.0f}%{flag} | {agree:.5f} |")  # fmt: skip
                log(lines[-1])
        lines.append("")
        if assign_only:
            continue
        lines += [f"### MoC encode search (assign_multi: M = {MOC_ENCODE['m']}, d = "
                  f"{MOC_ENCODE['d']}, K = {MOC_ENCODE['k']}, N = {MOC_ENCODE['n']:,}), "
                  f"{threads} thread{plural}", "",
                  "| kernel | best s | items/s | vs default kernel |", "|---|---|---|---|"]
        enc = {kn: run_worker({"kind": "moc_encode", "lib": "moc_fast", "threads": threads,
                               "kernel": kn, **MOC_ENCODE}) for kn in kernels}  # fmt: skip
        for kn, r in enc.items():
            lines.append(f"| {kn} | {r['seconds']:.4f} | {r['items_per_s']:,.0f} | "
                         f"{enc[best]['items_per_s'] / r['items_per_s']:.2f}x slower |")
            log(lines[-1])
        lines.append("")
        lines += [f"### kmeans from the same initial centroids, {threads} thread{plural} "
                  f"(N = {ROWS:,}, 25 iterations)", "",
                  "| (D, K) | library | level | best s | other / moc_fast at its level "
                  "| iterations run | inertia | inertia vs moc_fast |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for d, k in KMEANS_SHAPES:
            x, _ = data(ROWS, d, 1)
            res = {}
            for kn in kernels:
                for lib in ("moc_fast", "faiss"):
                    path = tmp / f"km-{lib}-{kn}-{d}-{k}-{threads}.npy"
                    task = {"kind": "kmeans", "lib": lib, "threads": threads, "d": d, "k": k,
                            "n": ROWS, "iters": 25, "kernel": kn, "codes_path": str(path)}
                    res[kn, lib] = run_worker(task)
                    dist = mf.assign(x, np.load(path))[1]
                    res[kn, lib]["inertia"] = float(dist.astype(np.float64).sum())
            for (kn, lib), r in res.items():
                base = res[kn, "moc_fast"]
                lines.append(f"| ({d}, {k}) | {lib} | {kn} | {r['seconds']:.3f} | "
                             f"{r['seconds'] / base['seconds']:.2f}x | {r['iterations']} | "
                             f"{r['inertia']:.6g} | "
                             f"{100 * (r['inertia'] / base['inertia'] - 1):+.3f}% |")  # fmt: skip
                log(lines[-1])
        lines.append("")
    return "\n".join(lines)


BEGIN, END = "<!-- engine_fair:begin -->", "<!-- engine_fair:end -->"


def splice(results: Path, section: str) -> None:
    """Replace the text between the markers in RESULTS.md (atomically)."""
    text = results.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{results} lacks the {BEGIN} / {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    tmp = results.with_suffix(".md.tmp")
    tmp.write_text(f"{head}{BEGIN}\n{section}\n{END}{tail}")
    tmp.replace(results)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"), help="file to update")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of assign")
    parser.add_argument("--kernels", help="comma-separated kernels to measure (default: all)")
    parser.add_argument("--shapes", help="comma-separated DxK shapes (default: all)")
    parser.add_argument("--threads", help="comma-separated thread counts (default: 1 and all)")
    parser.add_argument("--assign-only", action="store_true", help="skip encode and k-means")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if "torch" in sys.modules or "faiss" in sys.modules:
        raise SystemExit("the parent must not import torch or faiss")
    threads = ([int(t) for t in args.threads.split(",")] if args.threads
               else sorted({1, os.cpu_count() or 1}))  # fmt: skip
    shapes = ([tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
              if args.shapes else None)  # fmt: skip
    focused = bool(args.kernels or args.shapes or args.threads or args.assign_only)
    section = measure(threads, rounds=args.rounds, only=args.kernels and args.kernels.split(","),
                      shapes=shapes, assign_only=args.assign_only)  # fmt: skip
    print(section)
    if not args.no_write and not focused:  # a focused check never replaces the full tables
        splice(Path(args.results), section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
