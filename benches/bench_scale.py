"""Scale benchmark (not in the test run): out-of-core indexing and streamed CTR training.

    python benches/bench_scale.py                 # the issue's sizes: 5M x 384, 50M samples
    python benches/bench_scale.py --items 1000000 --samples 10000000   # smaller
    python benches/bench_scale.py --quick         # a one-minute smoke run

Each phase runs in its own process and reports its throughput and its own peak resident
memory (VmHWM), so phases never share a heap or an OpenMP pool:
1. MoC (M = 3, K = 256) indexer: 1 epoch from a memory-mapped `.npy`, then encode it; the same
   on the first `--compare-items` rows in RAM for the streamed/in-memory ratio;
2. DeepFM + MoC `fit_ctr`: 1 epoch streamed from parquet shards (DataLoader), and 1 epoch on
   the first `--compare-samples` samples in memory;
3. the in-memory epoch again under `torchrun --nproc_per_node=2` (gloo, one thread per
   process): throughput per process.
4. `--only catalogue`: a `--catalogue-items` (default 100M) x 384 catalogue streamed from a
   seeded generator (Ray `range` blocks; 100M x 384 float32 is 154 GB, more than the disk)
   through `encode_ray` (RQ-k-means, PCA 64, 3 x 256 + collision code): the generator's read
   tasks and the encoder actors share `--threads` CPUs, the collision pass runs in hash
   partitions; reports items/s, the driver's peak RSS and the largest Ray worker's, and the
   `ItemCodes` table's size.
Data are synthetic (clustered embeddings; users/items/codes drawn at random): throughput and
memory do not depend on what the numbers mean. Results go to `--out` (JSON) and, with
`--results`, into benches/RESULTS.md between `<!-- bench_scale:begin/end -->`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FIELDS = (100_000, 100_000)  # user and item vocabularies (Amazon-category sizes x 5-10)
M, K, EMBED = 3, 256, 16


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM of its own address space. (`ru_maxrss`
    would not do: Linux carries the forking parent's high-water mark across fork + exec.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


class ProcessPeak:
    """The largest VmHWM among other processes, sampled every second from /proc while a phase
    runs: this process's children (DataLoader workers; `marker=None`), or every process whose
    command line contains `marker` (Ray's workers). They are separate processes, so their
    memory is not in this one's VmHWM."""

    def __init__(self, marker: str | None = None) -> None:
        import threading

        self.marker, self.peak_mb, self._stop = marker, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _pids(self) -> list[Path]:
        if self.marker is None:
            me = os.getpid()
            kids = Path(f"/proc/{me}/task/{me}/children").read_text().split()
            return [Path(f"/proc/{pid}") for pid in kids]
        return [p for p in Path("/proc").glob("[0-9]*")
                if self.marker in (p / "cmdline").read_text()]  # fmt: skip

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                procs = self._pids()
            except OSError:
                continue
            for proc in procs:
                try:
                    for line in (proc / "status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)
                except OSError:
                    pass

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mb


def make_embeddings(path: Path, n: int, d: int, seed: int = 0) -> None:
    """A clustered (N, D) float32 `.npy` written block by block (never whole in memory)."""
    if path.exists() and np.load(path, mmap_mode="r").shape == (n, d):
        return
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1024, d)).astype(np.float32)
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d))
    for s in range(0, n, 262_144):
        b = min(262_144, n - s)
        out[s : s + b] = centres[rng.integers(0, 1024, b)] + 0.5 * rng.standard_normal(
            (b, d), dtype=np.float32
        )
    out.flush()
    del out
    os.replace(tmp, path)


def ctr_chunk(n: int, seed: int):
    import torch

    from moc_fast.train import CTRData

    rng = np.random.default_rng(seed)
    x = np.stack([rng.integers(0, f, n) for f in FIELDS], 1)
    codes = rng.integers(0, K, (n, M))
    y = (rng.random(n) < 0.3).astype(np.float32)
    return CTRData(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(codes))


def make_shards(folder: Path, n: int, chunk: int = 2_000_000) -> None:
    from moc_fast.data.shards import META, write_ctr_shards

    if (folder / META).exists() and json.loads((folder / META).read_text())["rows"] == n:
        return
    chunks = (ctr_chunk(min(chunk, n - s), seed=s) for s in range(0, n, chunk))
    write_ctr_shards(chunks, folder, row_group=131_072)


def model():
    import torch

    from moc_fast.nn import CTRModel

    torch.manual_seed(0)
    return CTRModel(list(FIELDS), embed_dim=EMBED, backbone="deepfm", num_codebooks=M,
                    codebook_size=K, fusion="gate")  # fmt: skip


# ---- phases (each in a subprocess: `bench_scale.py --phase NAME ...`) ----------------------


def phase_index(args: argparse.Namespace) -> dict:
    import torch

    from moc_fast.index import MoCIndexer

    torch.set_num_threads(args.threads)
    src = str(args.work / "emb.npy")
    x = np.load(src, mmap_mode="r")
    if args.in_memory:
        x = np.array(x[: args.compare_items])  # the array in RAM
    n = len(x)
    idx = MoCIndexer(M, K, seed=0)
    t = time.perf_counter()
    idx.fit(x if args.in_memory else src, epochs=1, batch_size=1024, device="cpu",
            progress=False)  # fmt: skip
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    codes = idx.encode(x if args.in_memory else src)
    enc_s = time.perf_counter() - t
    assert codes.shape == (n, M)
    return {"items": n, "fit_items_per_s": n / fit_s, "encode_items_per_s": n / enc_s}


def phase_ctr(args: argparse.Namespace) -> dict:
    import torch

    from moc_fast.data.shards import ParquetCTRDataset
    from moc_fast.train import fit_ctr

    torch.set_num_threads(args.threads)
    val = ctr_chunk(50_000, seed=10**9)
    if args.in_memory:
        train = ctr_chunk(args.compare_samples, seed=1)
        n = len(train)
    else:
        ds = ParquetCTRDataset(args.work / "shards", batch_size=args.batch_size, seed=0)
        prefetch = 4 if args.workers else None
        train = torch.utils.data.DataLoader(
            ds, batch_size=None, num_workers=args.workers, prefetch_factor=prefetch
        )
        n = ds.rows // int(os.environ.get("WORLD_SIZE", 1))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    workers = ProcessPeak()
    t = time.perf_counter()
    fit_ctr(model(), train, val, epochs=1, batch_size=args.batch_size, device="cpu",
            progress=False)  # fmt: skip
    s = time.perf_counter() - t
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return {"samples": n, "seconds": s, "samples_per_s": n / s, "world": world,
            "samples_per_s_per_process": n / world / s,
            "loader_worker_peak_rss_mb": workers.stop()}  # fmt: skip


def clustered(start: int, n: int, d: int = 384) -> np.ndarray:
    """Rows start..start+n of a synthetic catalogue: 1024 topic centres plus noise, seeded by
    `start` (so any block can be made on any worker, in any order)."""
    centres = np.random.default_rng(0).standard_normal((1024, d)).astype(np.float32)
    rng = np.random.default_rng([1, start])
    return centres[rng.integers(0, 1024, n)] + 0.5 * rng.standard_normal((n, d), np.float32)


def phase_catalogue(args: argparse.Namespace) -> dict:
    import ray

    from moc_fast.distributed import encode_ray
    from moc_fast.index import RQKMeansIndexer
    from moc_fast.nn import ItemCodes

    n = args.catalogue_items
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False,
             object_store_memory=2 << 30)  # a bounded store: its pages count in RSS
    idx = RQKMeansIndexer(3, K, pca_dim=64, collision_code=True).fit(clustered(0, 200_000))
    ds = ray.data.range(n, override_num_blocks=max(1, n // 1_000_000)).map_batches(
        lambda b: {"embedding": clustered(int(b["id"][0]), len(b["id"]))}, batch_size=65_536
    )
    workers = ProcessPeak("ray::")
    t = time.perf_counter()
    codes = encode_ray(ds, idx, batch_size=65_536, num_cpus=1)
    s = time.perf_counter() - t
    worker_mb = workers.stop()
    table = ItemCodes(codes).table
    return {"items": n, "seconds": s, "items_per_s": n / s, "ray_worker_peak_rss_mb": worker_mb,
            "codes_shape": list(codes.shape), "largest_collision_code": int(codes[:, -1].max()),
            "item_codes_dtype": str(table.dtype), "item_codes_mb": table.nbytes / 2**20,
            "int64_codes_mb": codes.nbytes / 2**20}  # fmt: skip


def run_phase(args: argparse.Namespace, name: str, *extra: str, torchrun: int = 0) -> dict:
    base = [str(Path(__file__).resolve()), "--phase", name, "--work", str(args.work),
            "--threads", str(args.threads), "--batch-size", str(args.batch_size),
            "--compare-items", str(args.compare_items), "--workers", str(args.workers),
            "--compare-samples", str(args.compare_samples),
            "--catalogue-items", str(args.catalogue_items), *extra]  # fmt: skip
    cmd = [sys.executable, *base]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}",
               "--master_port=29581", *base]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for old in args.work.glob(f"phase-{name}-*.json"):
        old.unlink()
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"phase {name} failed:\n{out.stderr[-4000:]}")
    files = sorted(args.work.glob(f"phase-{name}-*.json"))
    rows = [json.loads(f.read_text()) for f in files]
    result = rows[0]
    result["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rows)
    result["wall_s"] = time.perf_counter() - t
    print(f"{name} {' '.join(extra)}: {json.dumps(result)}", flush=True)
    return result


def table(res: dict) -> str:
    if not all(k in res for k in ("index", "index_ram", "ctr", "ctr_ram", "ctr_ddp")):
        return "\n".join(catalogue_rows(res))  # a partial run (--only)
    i, im, c, cm, d = (res[k] for k in ("index", "index_ram", "ctr", "ctr_ram", "ctr_ddp"))
    worker = (f"{c['loader_worker_peak_rss_mb']:,.0f} MB" if "loader_worker_peak_rss_mb" in c
              else "not measured in this run")  # fmt: skip
    return "\n".join([
        f"`python benches/bench_scale.py {res['argv']}` — {res['cpu']}, {res['threads']} "
        f"threads per process; each phase in its own process (peak RSS = its VmHWM).",
        "",
        "| phase | N | throughput | in RAM (same code, first rows) | streamed / RAM | peak RSS |",
        "|---|---|---|---|---|---|",
        f"| MoC fit, 1 epoch, memory-mapped | {i['items']:,} items | "
        f"{i['fit_items_per_s']:,.0f} items/s | {im['fit_items_per_s']:,.0f} items/s "
        f"({im['items']:,}) | {i['fit_items_per_s'] / im['fit_items_per_s']:.2f} | "
        f"{i['peak_rss_mb']:,.0f} MB (RAM: {im['peak_rss_mb']:,.0f} MB) |",
        f"| MoC encode, memory-mapped | {i['items']:,} items | "
        f"{i['encode_items_per_s']:,.0f} items/s | {im['encode_items_per_s']:,.0f} items/s | "
        f"{i['encode_items_per_s'] / im['encode_items_per_s']:.2f} | (same process) |",
        f"| DeepFM + MoC `fit_ctr`, 1 epoch, parquet streamed | {c['samples']:,} samples | "
        f"{c['samples_per_s']:,.0f} samples/s | {cm['samples_per_s']:,.0f} samples/s "
        f"({cm['samples']:,}) | {c['samples_per_s'] / cm['samples_per_s']:.2f} | "
        f"{c['peak_rss_mb']:,.0f} MB + loader worker {worker} "
        f"(RAM: {cm['peak_rss_mb']:,.0f} MB) |",
        f"| the in-RAM epoch, `torchrun --nproc_per_node=2` (gloo, 1 thread each) | "
        f"{d['samples']:,} samples | {d['samples_per_s_per_process']:,.0f} samples/s per "
        f"process ({d['samples_per_s']:,.0f} together) | | | "
        f"{d['peak_rss_mb']:,.0f} MB (max of ranks) |",
        *catalogue_rows(res),
    ])  # fmt: skip


def catalogue_rows(res: dict) -> list[str]:
    if "catalogue" not in res:
        return []
    c = res["catalogue"]
    return [
        f"| {c['items'] / 1e6:,.0f}M x 384 catalogue -> codes through Ray (`encode_ray`, "
        f"RQ-k-means "
        f"PCA 64, 3 x 256 + collision code; generator + 1 actor on {res['threads']} CPUs; "
        f"`{res.get('catalogue_argv', '')}`) | {c['items']:,} items | "
        f"{c['items_per_s']:,.0f} items/s ({c['seconds'] / 60:,.1f} min) | | | driver "
        f"{c['peak_rss_mb']:,.0f} MB, largest Ray worker {c['ray_worker_peak_rss_mb']:,.0f} MB; "
        f"`ItemCodes` {c['item_codes_mb']:,.0f} MB as {c['item_codes_dtype']} "
        f"(int64: {c['int64_codes_mb']:,.0f} MB) |",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=5_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--samples", type=int, default=50_000_000)
    p.add_argument("--compare-items", type=int, default=500_000)
    p.add_argument("--compare-samples", type=int, default=5_000_000)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers when streaming")
    p.add_argument("--work", type=Path, default=Path("/tmp/moc_fast_bench_scale"))
    p.add_argument("--out", type=Path, default=HERE / "bench_scale.json")
    p.add_argument("--results", action="store_true", help="write benches/RESULTS.md")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--resume", action="store_true", help="keep the phases already in --out")
    p.add_argument("--catalogue-items", type=int, default=100_000_000)
    p.add_argument("--only", help="comma-separated phases to run (e.g. catalogue)")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--in-memory", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:  # one JSON file per process (torchrun's ranks would interleave stdout)
        phase = {"index": phase_index, "ctr": phase_ctr, "catalogue": phase_catalogue}
        res = phase[args.phase](args)
        res["peak_rss_mb"] = peak_rss_mb()
        rank = os.environ.get("RANK", "0")
        (args.work / f"phase-{args.phase}-{rank}.json").write_text(json.dumps(res))
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        return
    if args.quick:
        args.items, args.samples, args.compare_items, args.compare_samples = (
            20_000, 200_000, 10_000, 100_000)  # fmt: skip
    args.work.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    t = time.perf_counter()
    if only is None or only - {"catalogue"}:
        make_embeddings(args.work / "emb.npy", args.items, args.dim)
        make_shards(args.work / "shards", args.samples)
    print(f"data ready in {time.perf_counter() - t:.0f} s", flush=True)
    res = json.loads(args.out.read_text()) if args.resume and args.out.exists() else {}
    argv = " ".join(a for a in sys.argv[1:] if a not in ("--resume", "--results"))
    if only is None:
        res.update(argv=argv, threads=args.threads, cpu=platform.processor() or platform.machine())
    one_thread = argparse.Namespace(**{**vars(args), "threads": 1})
    phases = {
        "index": lambda: run_phase(args, "index"),
        "index_ram": lambda: run_phase(args, "index", "--in-memory"),
        "ctr": lambda: run_phase(args, "ctr"),
        "ctr_ram": lambda: run_phase(args, "ctr", "--in-memory"),
        "ctr_ddp": lambda: run_phase(one_thread, "ctr", "--in-memory", torchrun=2),
        "catalogue": lambda: run_phase(args, "catalogue"),
    }
    for key, run in phases.items():
        if key not in res and (only is None or key in only):
            res[key] = run()
            if only is not None:  # the other phases' command line stays; this one notes its own
                res[f"{key}_argv"] = argv
            args.out.write_text(json.dumps(res, indent=2))  # resumable after each phase
    print(table(res))
    if args.results:
        path = HERE / "RESULTS.md"
        text = path.read_text()
        begin, end = "<!-- bench_scale:begin -->", "<!-- bench_scale:end -->"
        block = f"{begin}\n{table(res)}\n{end}"
        if begin in text:
            text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
        else:
            text += f"\n## Scale (bench_scale.py)\n\n{block}\n"
        path.write_text(text)


if __name__ == "__main__":
    main()
