"""Study v2's analysis, written before its results exist (docs/results/v2/PLAN.md §2, §6, §7).

    python scripts/analyse_v2.py            # docs/results/v2/report.md (+ the memory plot)

Reads docs/results/v2/<dataset>/results.csv, averages each (dataset, method, scale, seed)
over the two backbones, and tests the primary hypotheses H1-H4 over seeds (one-sided t-tests,
Holm over the family of 8). Every other table is marked exploratory. The analysis uses, per
dataset, the seeds that are complete for every primary arm.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

from moc_fast.fileio import atomic_write_bytes, read_csv_rows
from moc_fast.stats import holm, one_sided_t, slope

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "v2"
BACKBONES = ("deepfm", "dcnv2")
PRIMARY = [("id-only", 1), ("text-mlp", 1), ("codes-text", 7), ("rqvae", 7),
           ("moc-residual", 1), ("moc-residual", 3), ("moc-residual", 7),
           ("codes-only", 7)]  # fmt: skip
DELTA = 0.005  # H4's non-inferiority margin in AUC
MIN_SEEDS = 5
HYPOTHESES = {
    "H1": "MoC-residual 7x > RQ-VAE 7x",
    "H2": "MoC's gain over ID-only grows with scale (slope over 1x/3x/7x)",
    "H3": "codes + text > text-MLP",
    "H4": f"codes-only 7x (no item-ID table) ≥ ID-only − {DELTA} (non-inferiority)",
}


def seed_means(rows: list[dict], column: str = "test_auc") -> dict[tuple, dict[int, float]]:
    """(method, scale) -> seed -> the mean of `column` over the backbones, for seeds that
    have every backbone."""
    cells: dict[tuple, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r["backbone"] in BACKBONES and r.get(column, "") not in ("", None):
            key = (r["method"], int(r["scale"]))
            cells[key][int(r["seed"])][r["backbone"]] = float(r[column])
    return {key: {s: sum(v.values()) / len(v) for s, v in per.items()
                  if set(v) == set(BACKBONES)} for key, per in cells.items()}  # fmt: skip


def complete_seeds(means: dict[tuple, dict[int, float]]) -> list[int]:
    sets = [set(means.get(arm, {})) for arm in PRIMARY]
    return sorted(set.intersection(*sets)) if sets else []


def per_seed_quantities(means: dict[tuple, dict[int, float]], seeds: list[int]) -> dict:
    """Each hypothesis's per-seed number (before its test)."""
    a = lambda m, s, seed: means[(m, s)][seed]  # noqa: E731
    return {
        "H1": [a("moc-residual", 7, k) - a("rqvae", 7, k) for k in seeds],
        "H2": [slope([1, 3, 7], [a("moc-residual", s, k) - a("id-only", 1, k) for s in (1, 3, 7)])
               for k in seeds],  # fmt: skip
        "H3": [a("codes-text", 7, k) - a("text-mlp", 1, k) for k in seeds],
        "H4": [a("codes-only", 7, k) - a("id-only", 1, k) for k in seeds],
    }


def primary(results: dict[str, list[dict]]) -> list[dict]:
    """One record per (hypothesis, dataset): n, mean, interval, exact p, Holm p, survives."""
    recs = []
    for dataset, rows in results.items():
        means = seed_means(rows)
        seeds = complete_seeds(means)
        if len(seeds) < MIN_SEEDS:
            raise SystemExit(f"{dataset}: {len(seeds)} complete seeds, the plan needs >= 5")
        for h, values in per_seed_quantities(means, seeds).items():
            res = one_sided_t(values, margin=DELTA if h == "H4" else 0.0)
            recs.append(dict(h=h, dataset=dataset, seeds=seeds, values=values, res=res))
    for rec, adj in zip(recs, holm([r["res"].p for r in recs]), strict=True):
        rec["holm"] = adj
        rec["survives"] = adj < 0.05
    return recs


def bootstrap_lines(dataset: str, seeds: list[int], resamples: int = 1000) -> list[str]:
    """Per seed, the paired bootstrap interval over test users of H1's and H3's AUC
    difference (DeepFM), from the saved predictions; how much of the seed-to-seed spread
    is test sampling."""
    import numpy as np

    from moc_fast.stats import paired_bootstrap_auc
    from moc_fast.study import StudyConfig, StudyData

    folder = OUT / dataset / "predictions"
    if not folder.exists():
        return [f"- {dataset}: no saved predictions"]
    ds = StudyData(str(ROOT.parent / "shared" / "data" / "amazon2014" / dataset),
                   StudyConfig(vary_data=True, progress=False))  # fmt: skip
    name = ds.name
    lines = []
    for h, (a, b) in {"H1": (("moc-residual", 7), ("rqvae", 7)),
                      "H3": (("codes-text", 7), ("text-mlp", 1))}.items():  # fmt: skip
        for seed in seeds:
            test = ds.splits_for(seed).test
            files = [folder / f"{name}-{m}-{k}-deepfm-{seed}.npy" for m, k in (a, b)]
            if not all(f.exists() for f in files):
                continue
            pa, pb = (np.load(f).astype(np.float64) for f in files)
            d, lo, hi = paired_bootstrap_auc(test.y.numpy(), pa, pb, test.x[:, 0].numpy(),
                                             resamples=resamples, seed=seed)  # fmt: skip
            lines.append(f"- {h} {dataset} seed {seed} (DeepFM): {d:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    return lines


def at_cap(rows: list[dict]) -> dict[str, float]:
    """Per method, the fraction of runs whose best epoch was their last allowed one."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        if r["backbone"] in BACKBONES:
            hits[r["method"]].append(int(r["best_epoch"]) >= int(r["epochs"]) and
                                     int(r["epochs"]) >= 30)  # fmt: skip
    return {m: sum(v) / len(v) for m, v in hits.items()}


def memory_points(rows: list[dict]) -> list[tuple[str, int, float, float, float]]:
    """(method, scale, item bytes, mean test AUC, its std over seeds) per arm: the points of
    the AUC-vs-bytes plot (PLAN.md §6), backbone-averaged per seed."""
    auc, nbytes = seed_means(rows), seed_means(rows, "item_bytes")
    points = []
    for key in sorted(auc, key=str):
        v, b = list(auc[key].values()), list(nbytes.get(key, {}).values())
        if not v or not b:
            continue
        mean = sum(v) / len(v)
        std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
        points.append((key[0], key[1], sum(b) / len(b), mean, std))
    return points


def memory_plot(results: dict[str, list[dict]], path: Path) -> Path | None:
    """Test AUC against the item-side bytes a deployed model holds, one panel per dataset
    (log x): what replacing the item table with semantic IDs saves, and what it costs."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the `study` extra brings matplotlib
        return None
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (dataset, rows) in zip(axes[0], results.items(), strict=True):
        for i, (m, k, b, mean, std) in enumerate(memory_points(rows)):
            ax.errorbar([b / 1e3], [mean], yerr=[std], marker="o", capsize=3, color=f"C{i}",
                        label=f"{m} {k}x")  # fmt: skip
        ax.set(xscale="log", title=dataset, xlabel="item-side bytes (KB, log)",
               ylabel="test AUC (mean ± std over seeds)")  # fmt: skip
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def markdown(results: dict[str, list[dict]], with_bootstrap: bool = True) -> str:
    recs = primary(results)
    lines = ["# Study v2: report", "", "Generated by `scripts/analyse_v2.py` from "
             "`docs/results/v2/<dataset>/results.csv` under the plan in `PLAN.md`.", "",
             "## Primary hypotheses (confirmatory; Holm over these 8 tests, α = 0.05)", "",
             "| hypothesis | dataset | seeds | mean effect | 95% interval | p (one-sided) "
             "| Holm p | survives |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in recs:
        res = r["res"]
        lines.append(f"| {r['h']}: {HYPOTHESES[r['h']]} | {r['dataset']} | {res.n} "
                     f"| {res.mean:+.4f} | [{res.low:+.4f}, {res.high:+.4f}] | {res.p:.2g} "
                     f"| {r['holm']:.2g} | {'yes' if r['survives'] else 'no'} |")  # fmt: skip
    lines += ["", "Per-seed values (backbone-averaged):", ""]
    for r in recs:
        vals = ", ".join(f"{v:+.4f}" for v in r["values"])
        lines.append(f"- {r['h']} {r['dataset']} (seeds {r['seeds']}): {vals}")
    lines += ["", "Test-sampling intervals (paired bootstrap over test users, 95%):", ""]
    for dataset in results:
        seeds = next(r["seeds"] for r in recs if r["dataset"] == dataset)
        lines += bootstrap_lines(dataset, seeds) if with_bootstrap else []
    lines += ["", "## Exploratory: every arm (not part of any test)", "",
              "| dataset | method | scale | test AUC | HR@10 | NDCG@10 | item bytes "
              "| runs at cap |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for dataset, rows in results.items():
        cap = at_cap(rows)
        cols = {c: seed_means(rows, c) for c in ("test_auc", "hr_10", "ndcg_10", "item_bytes")}
        for key in sorted(cols["test_auc"], key=str):
            cells = []
            for c in ("test_auc", "hr_10", "ndcg_10"):
                v = list(cols[c].get(key, {}).values())
                cells.append(f"{sum(v) / len(v):.4f}" if v else "-")
            b = list(cols["item_bytes"].get(key, {}).values())
            nbytes = f"{sum(b) / len(b) / 1e3:,.0f} KB" if b else "-"
            lines.append(f"| {dataset} | {key[0]} | {key[1]}x | {' | '.join(cells)} | {nbytes} "
                         f"| {100 * cap.get(key[0], math.nan):.0f}% |")  # fmt: skip
    lines += ["", "AUC against item-side bytes (PLAN.md §6): `auc_vs_bytes.png`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="beauty,toys")
    parser.add_argument("--out", default=str(OUT / "report.md"))
    args = parser.parse_args(argv)
    results = {d: read_csv_rows(OUT / d / "results.csv") for d in args.datasets.split(",")}
    text = markdown(results)
    atomic_write_bytes(Path(args.out), text.encode())
    memory_plot(results, Path(args.out).parent / "auc_vs_bytes.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
