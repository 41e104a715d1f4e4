"""One-call GPU check and timing of the fused MoC embedding op (benches/gpu_check.sh runs it).

    python benches/gpu_bench.py --budget 360            # appends to $OUT/gpu_bench.jsonl
    python benches/gpu_bench.py --render gpu_bench.jsonl   # the markdown tables from a run
    python benches/gpu_bench.py --smoke                 # tiny sizes; on a CPU-only machine the
                                                        # kernels run in Triton's interpreter

Every finished item is one JSON line appended (and flushed) at once, so a run that is killed
keeps all it finished; `--budget` stops cleanly before the next item once the time is spent.
Order: the smoke correctness check, the headline shape's check, its timing
(B = 65,536, M = 7, e = 64, r = 224, gate, TF32 then IEEE), then the other checks and timings.
Correctness and timing use the same activation (silu). Each timing row has the measured ms of
torch eager, `torch.compile` of the reference and the Triton op, their peak memory, the
FLOPs each really does (the Triton gate backward recomputes u: 7 GEMMs, not 6) and what
docs/gpu.md's cost model predicted for the same card, so the model can be checked.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import torch

if not torch.cuda.is_available():  # --smoke on a CPU-only machine: Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from moc_fast.kernels import moc_embedding, moc_embedding_torch, tolerance  # noqa: E402
from moc_fast.kernels.cost_model import GPUS, floor_seconds, model  # noqa: E402
from moc_fast.kernels.moc_embedding import round_to_tf32  # noqa: E402

ACT = "silu"  # checks and timings alike: with relu, TF32 rounding flips act'(h) near h = 0
HEADLINE = (65_536, 7, 256, 64, 224, "gate")
IMPL_VARIANT = {"torch-eager": "eager", "torch-compile": "compile", "triton": "fused"}


class Log:
    """Append-only JSON lines, each flushed and fsynced as soon as it is written."""

    def __init__(self, path: str):
        self.path = path
        self.records: list[dict] = []

    def write(self, record: dict) -> None:
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        print(json.dumps(record), flush=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, reps: int) -> float:
    """Median seconds per call over `reps` calls after warm-up (which also autotunes)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def make(b, m, k, e, r, dev, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, k, (b, m), generator=g).to(dev)
    params = [
        torch.randn(m, k, e, generator=g),
        torch.randn(m * e, r, generator=g) / (m * e) ** 0.5,
        0.1 * torch.randn(r, generator=g),
        torch.randn(r, m * e, generator=g) / r**0.5,
        0.1 * torch.randn(m * e, generator=g),
    ]
    dout = torch.randn(b, m, e, generator=g).to(dev)
    return codes, [p.to(dev, dtype) for p in params], dout


def run(fn, codes, params, dout, mode):
    ps = [p.detach().clone().requires_grad_() for p in params]
    out = fn(codes, *ps, mode, ACT)
    out.backward(dout.to(out.dtype))
    return [out.detach(), *(p.grad for p in ps)]


def rel(a, b) -> float:
    return ((a.double() - b.double()).abs().max() / (b.double().abs().max() + 1e-12)).item()


def check(dev, shape, label, precision, dtype) -> dict:
    """Kernel vs reference (fp64 on the same inputs, TF32-rounded for the TF32 run): the worst
    relative error over the output and the five gradients, for each fusion."""
    torch.set_float32_matmul_precision(precision)
    tf32 = precision != "highest" and dtype == torch.float32
    b, m, k, e, r = shape
    worst = {}
    for mode in ("gate", "residual", "none"):
        codes, params, dout = make(b, m, k, e, r, dev, dtype)
        got = run(moc_embedding, codes, params, dout, mode)
        rnd = round_to_tf32 if tf32 else (lambda t: t)
        ref = run(moc_embedding_torch, codes, [rnd(p.float()).double() for p in params],
                  dout.double(), mode)  # fmt: skip
        worst[mode] = max(rel(a, c) for a, c in zip(got, ref, strict=True) if c is not None)
    torch.set_float32_matmul_precision("highest")
    tol = tolerance(dtype, tf32)
    return dict(kind="check", check=label, shape=list(shape), err=worst, tolerance=tol,
                ok=all(v < tol for v in worst.values()))  # fmt: skip


def check_deterministic(dev) -> dict:
    codes, params, dout = make(5000, 7, 16, 16, 56, dev)  # few codes: heavy collisions
    torch.use_deterministic_algorithms(True)
    try:
        g1 = run(moc_embedding, codes, params, dout, "gate")
        g2 = run(moc_embedding, codes, params, dout, "gate")
    finally:
        torch.use_deterministic_algorithms(False)
    same = all(torch.equal(a, c) for a, c in zip(g1, g2, strict=True))
    g3 = run(moc_embedding, codes, params, dout, "gate")
    err = max(rel(a, c) for a, c in zip(g1, g3, strict=True))
    return dict(kind="check", check="deterministic: bitwise repeat; vs atomics",
                shape=[5000, 7, 16, 16, 56], err={"gate": err}, tolerance=1e-4,
                ok=same and err < 1e-4)  # fmt: skip


def gemms(impl: str, mode: str) -> int:
    """GEMMs over the batch that one forward + backward does: 2 forward, 4 backward, and the
    Triton gate backward recomputes u (one more)."""
    if mode == "none":
        return 0
    return 7 if impl == "triton" and mode == "gate" else 6


def floor_bytes(b, m, e, r, dtype_size=4) -> int:
    """Unavoidable HBM traffic: codes read twice, out written, dout read, h written and read
    once (the same floor as the cost model's)."""
    return 2 * b * m * 8 + 2 * b * m * e * dtype_size + 2 * b * r * 4


def time_config(dev, shape, precision, impls, reps, card) -> dict:
    b, m, k, e, r, mode = shape
    torch.set_float32_matmul_precision(precision)
    prec = "ieee" if precision == "highest" else "tf32"
    torch._dynamo.reset()  # one compile per config: never the recompile limit
    codes, params, dout = make(b, m, k, e, r, dev)
    ps = [p.requires_grad_() for p in params]
    row = dict(kind="time", shape=list(shape), precision=precision, impls={})
    for label in impls:
        fn = {"torch-eager": moc_embedding_torch, "triton": moc_embedding,
              "torch-compile": torch.compile(moc_embedding_torch, dynamic=False),
              }[label]  # fmt: skip

        def step(fn=fn):
            for p in ps:
                p.grad = None
            fn(codes, *ps, mode, ACT).backward(dout)

        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = timed(step, reps)
        peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None
        flops = gemms(label, mode) * 2.0 * b * m * e * r
        entry = dict(ms=1e3 * t, peak_mb=peak / 2**20 if peak else None,
                     tflops=flops / t / 1e12, floor_gbs=floor_bytes(b, m, e, r) / t / 1e9)
        if card is not None:
            entry["modelled_ms"] = 1e3 * model(IMPL_VARIANT[label], card, b, m, e, r, mode,
                                               prec)["seconds"]  # fmt: skip
        row["impls"][label] = entry
    if card is not None:
        row["floor_ms"] = 1e3 * floor_seconds(card, b, m, e, r, prec)[0]
    torch.set_float32_matmul_precision("highest")
    return row


def plan(smoke: bool):
    """(kind, args) in run order: smoke check, headline check and timing, then the rest."""
    small = (333, 5, 100, 13, 37)
    if smoke:
        yield "check", (small, "fp32 highest", "highest", torch.float32)
        yield "time", ((256, 3, 64, 16, 24, "gate"), "high")
        yield "check", (small, "fp32 high (TF32)", "high", torch.float32)
        yield "time", ((256, 3, 64, 16, 24, "residual"), "highest")
        return
    head = (4096, 7, 256, 64, 224)
    yield "check", (small, "fp32 highest", "highest", torch.float32)
    yield "check", (head, "fp32 high (TF32)", "high", torch.float32)
    yield "time", (HEADLINE, "high")
    yield "time", (HEADLINE, "highest")
    yield "check", (head, "fp32 highest", "highest", torch.float32)
    yield "check", (head, "bf16", "highest", torch.bfloat16)
    yield "check", ((4096, 16, 256, 128, 1024), "fp32 high (TF32)", "high", torch.float32)
    yield "check", ((65_536, 3, 256, 16, 24), "fp32 highest", "highest", torch.float32)
    yield "deterministic", ()
    for m, e, mode in [(7, 64, "residual"), (3, 16, "gate"), (7, 16, "gate"), (3, 64, "gate"),
                       (3, 16, "residual"), (7, 16, "residual"), (3, 64, "residual")]:  # fmt: skip
        for precision in ("high", "highest"):
            yield "time", ((65_536, m, 256, e, m * e // 2, mode), precision)


def render(records: list[dict]) -> str:
    """The markdown that goes into benches/RESULTS.md, from whatever a run finished."""
    head = next((r for r in records if r.get("kind") == "device"), {})
    lines = [f"## {head.get('device', '?')}: MoCEmbedding op (torch {head.get('torch', '?')}, "
             f"triton {head.get('triton', '?')})", "",
             f"Measured device copy {head.get('copy_tbs', float('nan')):.2f} TB/s; "
             f"modelled card: {head.get('card')}; activation {ACT}", "", "### Correctness", "",
             "| check | shape (B, M, K, e, r) | max rel err (gate / residual / none) "
             "| tolerance | ok |", "|---|---|---|---|---|"]  # fmt: skip
    for r in records:
        if r.get("kind") == "check":
            errs = " / ".join(f"{v:.1e}" for v in r["err"].values())
            lines.append(f"| {r['check']} | {tuple(r['shape'])} | {errs} | {r['tolerance']:.0e} "
                         f"| {'yes' if r['ok'] else '**NO**'} |")  # fmt: skip
    lines += ["", "### Forward + backward (measured; modelled in brackets)", "",
              "| fp32 precision | B | M | e | r | fusion | impl | ms (model) | vs eager "
              "| vs compile | TFLOP/s | floor GB/s | peak MiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in records:
        if r.get("kind") != "time":
            continue
        b, m, _, e, rr, mode = r["shape"]
        impls = r["impls"]
        for label, w in impls.items():
            vs_e = impls["torch-eager"]["ms"] / w["ms"] if "torch-eager" in impls else None
            vs_c = impls["torch-compile"]["ms"] / w["ms"] if "torch-compile" in impls else None
            model_ms = f" ({w['modelled_ms']:.3f})" if "modelled_ms" in w else ""
            peak = f"{w['peak_mb']:.0f}" if w.get("peak_mb") else "-"
            lines.append(
                f"| {r['precision']} | {b} | {m} | {e} | {rr} | {mode} | {label} "
                f"| {w['ms']:.3f}{model_ms} | {f'{vs_e:.2f}x' if vs_e else '-'} "
                f"| {f'{vs_c:.2f}x' if vs_c else '-'} | {w['tflops']:.1f} "
                f"| {w['floor_gbs']:.0f} | {peak} |"
            )
    stop = [r for r in records if r.get("kind") == "stop"]
    lines += ["", f"Stopped: {stop[-1]['reason']}" if stop else "Stopped: killed before the end"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (checks the script)")
    parser.add_argument("--budget", type=float, default=float("inf"),
                        help="seconds; no new item starts after they are spent")  # fmt: skip
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."),
                                                      "gpu_bench.jsonl"))  # fmt: skip
    parser.add_argument("--impls", default="torch-eager,torch-compile,triton")
    parser.add_argument("--render", metavar="JSONL", help="print the tables of a finished run")
    args = parser.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            print(render([json.loads(line) for line in f if line.strip()]))
        return 0
    start = time.monotonic()
    log = Log(args.out)
    signal.signal(signal.SIGTERM, lambda *_: (log.write(dict(kind="stop", reason="SIGTERM")),
                                              sys.exit(3)))  # fmt: skip
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU (Triton interpreter)"
    card = next((g for key, g in GPUS.items() if key in name), None)
    x = torch.empty((1 << 28) if dev.type == "cuda" else (1 << 20), device=dev)
    copy_tbs = 2 * x.numel() * 4 / timed(lambda x=x: x.clone(), 5) / 1e12
    del x
    import triton

    log.write(dict(kind="device", device=name, card=card.name if card else None,
                   torch=torch.__version__, triton=triton.__version__,
                   copy_tbs=copy_tbs))  # fmt: skip
    impls = args.impls.split(",")
    reps = 2 if args.smoke else 30
    ok = True
    for kind, item in plan(args.smoke):
        spent = time.monotonic() - start
        if spent > args.budget:
            log.write(dict(kind="stop", reason=f"budget: {spent:.0f} s of {args.budget:.0f} s"))
            break
        t0 = time.monotonic()
        try:
            if kind == "check":
                record = check(dev, *item)
            elif kind == "deterministic":
                record = check_deterministic(dev)
            else:
                record = time_config(dev, *item, impls, reps, card)
        except Exception as err:  # record it and go on: one failure must not empty the run
            record = dict(kind="error", item=kind, args=repr(item), error=repr(err)[:2000])
        record["seconds"] = time.monotonic() - t0
        ok &= record.get("ok", record["kind"] != "error")
        log.write(record)
    else:
        log.write(dict(kind="stop", reason="done"))
    print(render(log.records))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
