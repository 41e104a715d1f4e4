"""Turn a pytest-benchmark JSON file into markdown tables with ratios against moc_fast."""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def _impl(bench: dict) -> str:
    """The competitor's name: the test id after the shape, e.g. D32-K256-faiss -> faiss."""
    return bench["param"].split("-", 2)[-1]


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    print(
        f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
        f"{data['machine_info'].get('cpu', {}).get('count', '?')} cores\n"
    )
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b["group"]].append(b)
    for group, rows in groups.items():
        ours = next((r for r in rows if _impl(r).startswith("moc_fast")), rows[0])
        base = ours["stats"]["min"]
        print(f"### {group}\n")
        print("| impl | best of rounds (s) | its time / moc_fast time | throughput, quality |")
        print("|---|---|---|---|")
        for r in sorted(rows, key=lambda r: r["stats"]["min"]):
            t = r["stats"]["min"]
            extra = dict(r.get("extra_info", {}))
            flops = extra.pop("flops", None)
            rows_ = extra.pop("rows", None)
            info = []
            if rows_:
                info.append(f"{rows_ / t / 1e6:.2f} M rows/s")
            if flops:
                info.append(f"{flops / t / 1e9:.0f} GFLOP/s")
            if "inertia" in extra:
                info.append(f"inertia {extra['inertia']:.6g}")
            print(f"| {_impl(r)} | {t:.4f} | {t / base:.2f}x | {', '.join(info)} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1])
