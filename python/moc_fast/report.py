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


def paired_deltas(rows: list[dict], base: str = "id-only") -> dict[tuple, dict[tuple, list]]:
    """{(dataset, backbone): {(method, scale): [test AUC - base's, per seed]}}: each run
    against the `base` run of the same dataset, backbone and seed (seed noise cancels)."""
    ref = {
        (r["dataset"], r["backbone"], r["seed"]): _f(r["test_auc"])
        for r in rows
        if r["method"] == base
    }
    out: dict[tuple, dict[tuple, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        key = (r["dataset"], r["backbone"], r["seed"])
        if r["method"] in (base, "popularity") or key not in ref:
            continue
        out[key[:2]][(r["method"], int(r["scale"]))].append(_f(r["test_auc"]) - ref[key])
    return out


def head_to_head(rows: list[dict], method: str, base: str) -> dict[tuple, dict[int, list]]:
    """{(dataset, backbone): {scale: [test AUC of `method` - `base`'s, per seed]}}: the two
    methods at the same scale, paired by dataset, backbone and seed — the paper's question
    (does MoC scale better than ME and RQ-VAE?) asked run by run."""
    ref = {
        (r["dataset"], r["backbone"], int(r["scale"]), r["seed"]): _f(r["test_auc"])
        for r in rows
        if r["method"] == base
    }
    out: dict[tuple, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        key = (r["dataset"], r["backbone"], int(r["scale"]), r["seed"])
        if r["method"] == method and key in ref:
            out[key[:2]][key[2]].append(_f(r["test_auc"]) - ref[key])
    return out


def chosen_on_validation(rows: list[dict]) -> dict[tuple, dict[str, tuple[int, float, float]]]:
    """{(dataset, backbone): {method: (scale, mean val AUC, mean test AUC)}} with the scale
    picked by validation AUC only."""
    vals: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        if r["backbone"] != "-":
            key = (r["dataset"], r["backbone"], r["method"], int(r["scale"]))
            vals[key].append((_f(r["val_auc"]), _f(r["test_auc"])))
    out: dict[tuple, dict[str, tuple[int, float, float]]] = defaultdict(dict)
    for (d, b, m, sc), v in sorted(vals.items()):
        val, test = float(np.mean([x[0] for x in v])), float(np.mean([x[1] for x in v]))
        if m not in out[(d, b)] or val > out[(d, b)][m][1]:
            out[(d, b)][m] = (sc, val, test)
    return out


# Two-sided 95% Student t quantiles by degrees of freedom (1..30); 1.96 beyond.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip


def t_interval(values) -> float:
    """Half-width of the 95% t interval of the mean (NaN for fewer than two values)."""
    n = len(values)
    if n < 2:
        return float("nan")
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    return float(t * _sample_std(values) / np.sqrt(n))


def _by_method(rows: list[dict], column: str, per: str = "dataset") -> tuple[list, dict]:
    """{(method, scale): {group: [values]}} of a column, grouped by dataset (or backbone)."""
    out: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        v = _f(r.get(column))
        if not np.isnan(v):
            out[(r["method"], int(r["scale"]))][r[per]].append(v)
    groups = sorted({g for t in out.values() for g in t})
    return groups, out


def _extra_markdown(rows: list[dict]) -> list[str]:
    """Calibration (logloss and ln 2), cold-item AUC, information abundance per representation."""
    lines: list[str] = []
    trained = [
        r for r in rows if r["method"] != "popularity" and not np.isnan(_f(r["test_logloss"]))
    ]
    if trained:
        above = sum(_f(r["test_logloss"]) > np.log(2) for r in trained)
        groups, table = _by_method(trained, "test_logloss")
        lines += ["", "## Test logloss (mean over seeds and backbones)", "",
                  f"{above} of {len(trained)} trained cells have test logloss above ln 2 = 0.693 "
                  "(worse than always predicting 0.5).", "",
                  "| method | scale | " + " | ".join(groups) + " |",
                  "|---|---|" + "---|" * len(groups)]  # fmt: skip
        for (m, sc), t in sorted(table.items()):
            cells = [f"{np.mean(t[g]):.4f}" if t.get(g) else "" for g in groups]
            lines.append(f"| {m} | {sc}x | " + " | ".join(cells) + " |")
    buckets = [("auc_items_0", "0"), ("auc_items_1_2", "1–2"), ("auc_items_3_9", "3–9"),
               ("auc_items_10plus", "≥ 10")]  # fmt: skip
    if any(not np.isnan(_f(r.get(b))) for r in rows for b, _ in buckets):
        datasets = sorted({r["dataset"] for r in rows})
        lines += ["", "## Test AUC by the item's training positives (cold items; mean over "
                  "seeds and backbones)", "",
                  "| method | scale | " + " | ".join(f"{d}: {lbl}" for d in datasets
                                                   for _, lbl in buckets) + " |",
                  "|---|---|" + "---|" * (len(datasets) * len(buckets))]  # fmt: skip
        cols = [_by_method(rows, b)[1] for b, _ in buckets]
        keys = sorted({k for t in cols for k in t})
        for key in keys:
            cells = []
            for d in datasets:
                for t in cols:
                    v = t.get(key, {}).get(d)
                    cells.append(f"{np.mean(v):.3f}" if v else "")
            lines.append(f"| {key[0]} | {key[1]}x | " + " | ".join(cells) + " |")
    reps = [("info_abundance", "code tables"), ("ia_collision", "collision table"),
            ("ia_fused", "fused item repr."), ("ia_item_id", "item-ID table")]  # fmt: skip
    if any(not np.isnan(_f(r.get(c))) for r in rows for c, _ in reps):
        lines += ["", "## Information abundance per representation (mean over seeds, "
                  "backbones and datasets)", "",
                  "| method | scale | " + " | ".join(lbl for _, lbl in reps) + " |",
                  "|---|---|" + "---|" * len(reps)]  # fmt: skip
        cols = [_by_method(rows, c)[1] for c, _ in reps]
        for key in sorted({k for t in cols for k in t}):
            cells = []
            for t in cols:
                vals = [v for g in t.get(key, {}).values() for v in g]
                cells.append(f"{np.mean(vals):.2f}" if vals else "")
            lines.append(f"| {key[0]} | {key[1]}x | " + " | ".join(cells) + " |")
    return lines


def _delta_cells(per_column: list[list[float]]) -> list[str]:
    """One table row of paired Δs: mean (positive runs / runs) per column, then all columns
    pooled with the 95% t interval."""
    out = [f"{np.mean(v):+.4f} ({sum(x > 0 for x in v)}/{len(v)})" if v else ""
           for v in per_column]  # fmt: skip
    pooled = [x for v in per_column for x in v]
    out.append(f"{np.mean(pooled):+.4f} ± {t_interval(pooled):.4f} "
               f"({sum(x > 0 for x in pooled)}/{len(pooled)})")  # fmt: skip
    return out


def _paired_markdown(rows: list[dict]) -> list[str]:
    deltas = paired_deltas(rows)
    if not deltas:
        return []
    cols = sorted(deltas)
    cells = sorted({k for t in deltas.values() for k in t})
    lines = [
        "",
        "## Δ test AUC vs ID-only, paired by seed (mean Δ; runs better than ID-only / runs; "
        '"all": mean Δ ± the 95% t interval over every paired run)',
        "",
        "| method | scale | " + " | ".join(f"{d} / {b}" for d, b in cols) + " | all |",
        "|---|---|" + "---|" * (len(cols) + 1),
    ]
    for cell in cells:
        out = _delta_cells([deltas[c].get(cell, []) for c in cols])
        lines.append(f"| {cell[0]} | {cell[1]}x | " + " | ".join(out) + " |")
    chosen = chosen_on_validation(rows)
    cols = sorted(chosen)
    methods = sorted({m for t in chosen.values() for m in t})
    lines += [
        "",
        "## Scale chosen on validation AUC (then its mean test AUC)",
        "",
        "| method | " + " | ".join(f"{d} / {b}" for d, b in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for m in methods:
        out = []
        for c in cols:
            sc, _, test = chosen[c].get(m, (0, 0.0, float("nan")))
            out.append(f"{sc}x: {test:.4f}" if sc else "")
        lines.append(f"| {m} | " + " | ".join(out) + " |")
    return lines


_CHALLENGERS = ("moc-gate", "moc-residual")
_BASELINES = ("me", "rqvae")


def _head_to_head_markdown(rows: list[dict]) -> list[str]:
    """MoC against ME and RQ-VAE at each scale, paired run by run."""
    pairs = [(m, b) for m in _CHALLENGERS for b in _BASELINES]
    tables = {p: head_to_head(rows, *p) for p in pairs}
    cols = sorted({c for t in tables.values() for c in t})
    if not cols:
        return []
    lines = [
        "",
        "## MoC vs ME and RQ-VAE at the same scale, paired by seed (mean Δ test AUC; runs where "
        'MoC is better / runs; "all": mean Δ ± the 95% t interval)',
        "",
        "| MoC − baseline | scale | " + " | ".join(f"{d} / {b}" for d, b in cols) + " | all |",
        "|---|---|" + "---|" * (len(cols) + 1),
    ]
    for (m, b), table in tables.items():
        for sc in sorted({s for t in table.values() for s in t}):
            out = _delta_cells([table.get(c, {}).get(sc, []) for c in cols])
            lines.append(f"| {m} − {b} | {sc}x | " + " | ".join(out) + " |")
    return lines


def _sample_std(values) -> float:
    """std with ddof = 1 (an estimate from few seeds); 0 for a single value."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def markdown(rows: list[dict], source: str = "results.csv") -> str:
    table = summarize(rows)
    if not table:
        return f"No finished cells yet in {source}.\n"
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
            m = float(np.mean(vals))
            if len(vals) > 1:  # the sample std (ddof = 1); none for a single run
                txt = f"{m:.4f} ± {_sample_std(vals):.4f} (n={len(vals)})"
            else:
                txt = f"{m:.4f} (n=1)"
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
    lines += _paired_markdown(rows)
    lines += _head_to_head_markdown(rows)
    lines += _extra_markdown(rows)
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


_METHOD_ORDER = ("id-only", "me", "rqvae", "moc-gate", "moc-none", "moc-residual", "text-mlp")


def _colour(method: str) -> str:
    """One colour per method in every plot."""
    i = _METHOD_ORDER.index(method) if method in _METHOD_ORDER else len(_METHOD_ORDER)
    return f"C{i}"


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
            title = " / ".join(key)
            for method in sorted({m for m, _ in cells}):
                pts = sorted(
                    (s, np.mean(v), _sample_std(v)) for (m, s), v in cells.items() if m == method
                )
                if method == "popularity":  # the floor, far below: named, not plotted
                    title += f" (popularity {pts[0][1]:.3f})"
                    continue
                ax.errorbar(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    yerr=[p[2] for p in pts],
                    capsize=3,
                    marker="o",
                    label=method + (" (= id-only at 1x)" if method == "me" else ""),
                    color=_colour(method),
                )
            ax.set(title=title, xlabel="scale", ylabel="test AUC (mean ± std over seeds)")
            ax.legend(fontsize=7)
        written.append(_save(plt, fig, out / "auc_vs_scale.png"))
    disc = defaultdict(dict)  # an index property: one curve per (dataset, indexer family)
    for r in rows:
        if not np.isnan(_f(r.get("discriminability"))):
            family = "moc" if r["method"].startswith("moc") else r["method"]
            disc[(r["dataset"], family)][int(r["scale"])] = _f(r["discriminability"])
    if disc:
        fig, ax = plt.subplots(figsize=(5, 4))
        datasets = sorted({d for d, _ in disc})
        styles = {d: ["-", "--", ":", "-."][i % 4] for i, d in enumerate(datasets)}
        for (d, m), pts in sorted(disc.items()):
            xs = sorted(pts)
            colour = _colour("moc-gate" if m == "moc" else m)
            ax.plot(
                xs,
                [pts[x] for x in xs],
                styles.get(d, "-"),
                marker="o",
                color=colour,
                label=f"{d} {m}",
            )
        ax.set(xlabel="scale", ylabel="H(code tuple) / log N", title="discriminability")
        ax.legend(fontsize=7)
        written.append(_save(plt, fig, out / "discriminability_vs_scale.png"))
    written += _spectrum_plots(plt, rows, out)
    return written


def _spectrum_plots(plt, rows: list[dict], out: Path) -> list[Path]:
    """Per dataset: mean normalised singular spectrum of each method's code-embedding table at
    each scale (dimension robustness), and information abundance vs scale."""
    from moc_fast.study import spectrum_name

    written = []
    spectra: dict[str, dict[tuple, list]] = defaultdict(lambda: defaultdict(list))
    ia: dict[str, dict[str, dict[int, list]]] = defaultdict(lambda: defaultdict(lambda: {}))
    for r in rows:
        p = out / "spectra" / spectrum_name(r)
        if p.exists():
            spectra[r["dataset"]][(r["method"], int(r["scale"]))].append(np.load(p))
        if not np.isnan(_f(r.get("info_abundance"))):
            per = ia[r["dataset"]][r["method"]].setdefault(int(r["scale"]), [])
            per.append(_f(r["info_abundance"]))
    styles = {1: ":", 2: "-.", 3: "--", 7: "-"}
    if spectra:
        fig, axes = plt.subplots(1, len(spectra), figsize=(6 * len(spectra), 4), squeeze=False)
        for ax, (d, curves) in zip(axes[0], sorted(spectra.items()), strict=True):
            for (m, sc), specs in sorted(curves.items()):
                s = np.mean(np.stack(specs), axis=0)
                c = _colour(m)
                ax.semilogy(
                    np.arange(1, len(s) + 1), s, styles.get(sc, "-"), color=c, label=f"{m} {sc}x"
                )
            ax.set(
                xlabel="singular value index",
                ylabel="σ / σ₁ (mean over runs)",
                title=f"{d}: code-table singular spectra",
            )
            ax.legend(fontsize=6, ncol=2)
        written.append(_save(plt, fig, out / "spectra.png"))
    if ia:
        fig, axes = plt.subplots(1, len(ia), figsize=(5 * len(ia), 4), squeeze=False)
        for ax, (d, methods) in zip(axes[0], sorted(ia.items()), strict=True):
            for m, pts in sorted(methods.items()):
                xs = sorted(pts)
                ax.plot(xs, [np.mean(pts[x]) for x in xs], marker="o", label=m, color=_colour(m))
            ax.set(xlabel="scale", ylabel="‖σ‖₁ / ‖σ‖∞", title=f"{d}: information abundance")
            ax.legend(fontsize=7)
        written.append(_save(plt, fig, out / "info_abundance_vs_scale.png"))
    return written


def write_report(out: str | Path) -> Path:
    from moc_fast.study import read_results

    out = Path(out)
    rows = read_results(out / "results.csv")
    pngs = plots(rows, out)
    text = "# Study report\n\n" + markdown(rows, str(out / "results.csv"))
    if pngs:
        text += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
    atomic_write_bytes(out / "report.md", text.encode())
    return out / "report.md"
