"""Retrieval decoding cost on CPU: time per user and peak memory of TIGER's trie-constrained
beam search against the parallel decoder's exact top-k, at Beauty's size and at 1M items.

    python benches/decode_cost.py                 # prints a markdown table
    python benches/decode_cost.py --sizes 12101   # one catalogue size

Each (decoder, N) runs in its own process (so one's memory is not the next one's floor):
build the model and its catalogue structures (TIGER: the prefix trie of N IDs; parallel: the
(N, M) code table), then reset the process's peak-RSS counter (`/proc/self/clear_refs`) and
decode one user's top-10 (history of 20, batch 1) 5 times. Reported: the best decode time;
the peak resident memory while decoding, over what was resident before it; and the build's
resident and peak memory over the bare process (torch and moc_fast imported); the build
includes one warm-up decode. Weights are untrained (decode cost does not depend on them);
d = 64, 2 + 2 layers, K = 256; TIGER has 3 levels plus the collision suffix.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

K, TOP, HISTORY, ROUNDS = 256, 10, 20, 5
DECODERS = ["tiger-beam20", "parallel-m3", "parallel-m7"]


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(decoder: str, n: int) -> dict:
    """One (decoder, N) in this process: build MB, decode peak MB, best ms per user."""
    import numpy as np
    import torch

    import moc_fast as mf
    from moc_fast.retrieval.models import ParallelDecoder
    from moc_fast.retrieval.tiger import TIGER

    torch.set_num_threads(int(os.environ.get("DECODE_THREADS", "2")))
    rng = np.random.default_rng(0)
    history = torch.as_tensor(rng.integers(0, n, (1, HISTORY)))
    bare = _status_mb("VmRSS")
    t0 = time.perf_counter()
    torch.manual_seed(0)
    if decoder.startswith("tiger"):
        ids = mf.resolve_collisions(rng.integers(0, K, (n, 3)))
        vocab = [K, K, K, int(ids[:, 3].max()) + 1]
        model = TIGER(torch.as_tensor(ids), vocab, dim=64, layers=2, heads=2).eval()

        def decode():
            items, invalid = model.recommend(history, TOP, beam=20)
            assert invalid == 0
            return items
    else:
        m = int(decoder.rsplit("m", 1)[1])
        codes = torch.as_tensor(rng.integers(0, K, (n, m)))
        model = ParallelDecoder(codes, K, dim=64).eval()

        def decode():
            return model.topk(history, TOP)[0]

    with torch.no_grad():
        decode()  # warm-up: first-call allocations and lazy set-up happen here, not in the timings
        built = _status_mb("VmRSS")
        build_peak = _status_mb("VmHWM")
        build_s = time.perf_counter() - t0
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        times = []
        for _ in range(ROUNDS):
            t = time.perf_counter()
            items = decode()
            times.append(time.perf_counter() - t)
        peak = _status_mb("VmHWM")
    assert items.shape == (1, TOP) and bool((items >= 0).all())
    return {"decoder": decoder, "n": n, "build_s": round(build_s, 2),
            "build_mb": round(built - bare, 1),
            "build_peak_mb": round(build_peak - bare, 1), "decode_peak_mb": round(peak - built, 1),
            "ms_per_user": round(1e3 * min(times), 2)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="12101,1000000")
    parser.add_argument("--decoders", default=",".join(DECODERS))
    parser.add_argument("--one", nargs=2, metavar=("DECODER", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]))))
        return 0
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        for decoder in args.decoders.split(","):
            out = subprocess.run([sys.executable, __file__, "--one", decoder, str(n)],
                                 check=True, capture_output=True, text=True)  # fmt: skip
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print("| decoder | N items | ms per user (best of 5) | decode: peak MB over resident "
          "| resident MB after build | build peak MB | build s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['decoder']} | {r['n']:,} | {r['ms_per_user']} | {r['decode_peak_mb']} "
              f"| {r['build_mb']} | {r['build_peak_mb']} | {r['build_s']} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
