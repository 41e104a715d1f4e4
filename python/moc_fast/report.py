"""report.md and plots from a study's results.csv."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from moc_fast.fileio import atomic_write_bytes

log = logging.getLogger(__name__)


def _f(v: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def summarize(rows: list[dict]) -> dict[tuple, dict[tuple, list[float]]]:
    """{(dataset, backbone): {(method, scale): [test AUC per seed]}}; popularity joins every
    backbone of its dataset."""
    table: dict[tuple, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    backbones = defaultdict(set)
    for r in rows:
        if r["backbone"] != "-":
            backbones[r["dataset"]].add(r["backbone"])
    for r in rows:
        targets = backbones[r["dataset"]] if r["backbone"] == "-" else [r["backbone"]]
        for b in targets:
            table[(r["dataset"], b)][(r["method"], int(r["scale"]))].append(_f(r["test_auc"]))
    return table


def markdown(rows: list[dict]) -> str:
    table = summarize(rows)
    if not table:
        return "No finished cells yet.\n"
    cols = sorted(table)
    cells = sorted({k for t in table.values() for k in t})
    head = "| method | scale | " + " | ".join(f"{d} / {b}" for d, b in cols) + " |"
    lines = [
        "## Test AUC (mean ± std over seeds; Δ vs the same method at 1x)\n",
        head,
        "|---|---|" + "---|" * len(cols),
    ]
    best = {c: max(np.mean(v) for v in table[c].values()) for c in cols}
    for method, scale in cells:
        out = []
        for c in cols:
            vals = table[c].get((method, scale))
            if not vals:
                out.append("")
                continue
            m, s = float(np.mean(vals)), float(np.std(vals))
            txt = f"{m:.4f} ± {s:.4f} (n={len(vals)})"
            base = table[c].get((method, 1))
            if scale != 1 and base:
                txt += f" Δ{m - np.mean(base):+.4f}"
            out.append(f"**{txt}**" if m == best[c] else txt)
        lines.append(f"| {method} | {scale}x | " + " | ".join(out) + " |")
    secs = [_f(r["seconds"]) for r in rows if r["method"] != "popularity"]
    lines += [
        "",
        f"{len(rows)} cells; train+test wall time per cell: median "
        f"{np.nanmedian(secs):.0f} s, total {np.nansum(secs) / 60:.1f} min."
        if secs
        else "",
    ]
    lines += [
        "",
        "## Every run",
        "",
        "| dataset | method | scale | backbone | seed | val AUC | test AUC | logloss | "
        "best epoch / run | s | discrim. | redundancy | IA |",
        "|---" * 13 + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['scale']} | {r['backbone']} | {r['seed']} | "
            f"{_f(r['val_auc']):.4f} | {_f(r['test_auc']):.4f} | {_f(r['test_logloss']):.4f} | "
            f"{r['best_epoch']} / {r['epochs']} | {_f(r['seconds']):.0f} | "
            f"{_f(r.get('discriminability')):.3f} | {_f(r.get('redundancy')):.3f} | "
            f"{_f(r.get('info_abundance')):.2f} |"
        )
    return "\n".join(lines) + "\n"


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plots(rows: list[dict], out: Path) -> list[Path]:
    """AUC vs scale per method, discriminability vs scale, and code-table spectra (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the `study` extra brings matplotlib
        log.warning("matplotlib is not installed: no plots")
        return []
    written = []
    table = summarize(rows)
    if table:
        fig, axes = plt.subplots(1, len(table), figsize=(5 * len(table), 4), squeeze=False)
        for ax, (key, cells) in zip(axes[0], sorted(table.items()), strict=True):
            for method in sorted({m for m, _ in cells}):
                pts = sorted((s, np.mean(v)) for (m, s), v in cells.items() if m == method)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
            ax.set(title=" / ".join(key), xlabel="scale", ylabel="test AUC")
            ax.legend(fontsize=7)
        written.append(_save(plt, fig, out / "auc_vs_scale.png"))
    disc = defaultdict(dict)
    for r in rows:
        if not np.isnan(_f(r.get("discriminability"))):
            disc[(r["dataset"], r["method"])][int(r["scale"])] = _f(r["discriminability"])
    if disc:
        fig, ax = plt.subplots(figsize=(5, 4))
        for (d, m), pts in sorted(disc.items()):
            xs = sorted(pts)
            ax.plot(xs, [pts[x] for x in xs], marker="o", label=f"{d} {m}")
        ax.set(xlabel="scale", ylabel="H(code tuple) / log N", title="discriminability")
        ax.legend(fontsize=7)
        written.append(_save(plt, fig, out / "discriminability_vs_scale.png"))
    spectra = sorted((out / "spectra").glob("*-0.npy")) if (out / "spectra").exists() else []
    if spectra:
        fig, ax = plt.subplots(figsize=(6, 4))
        for p in spectra:
            s = np.load(p)
            ax.semilogy(np.arange(1, len(s) + 1), s, label=p.stem.removesuffix("-0"))
        ax.set(xlabel="index", ylabel="σ / σ₁", title="code-table singular spectra (seed 0)")
        ax.legend(fontsize=6)
        written.append(_save(plt, fig, out / "spectra.png"))
    return written


def write_report(out: str | Path) -> Path:
    from moc_fast.study import read_results

    out = Path(out)
    rows = read_results(out / "results.csv")
    pngs = plots(rows, out)
    text = "# Study report\n\n" + markdown(rows)
    if pngs:
        text += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
    atomic_write_bytes(out / "report.md", text.encode())
    return out / "report.md"
