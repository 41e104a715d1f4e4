"""Does early stopping with the study's patience end runs inside a validation dip?

Trains a few study cells for the full epoch budget (no early stopping), then replays the
stopping rule (`moc_fast.train.early_stop`) on each validation-AUC curve: a seeded run is
identical up to where it would have stopped, so this shows what each patience would have
kept and what it would have missed. Writes a markdown table.

    .venv/bin/python scripts/patience_check.py --out docs/results/patience_check.md
    .venv/bin/python scripts/patience_check.py --config docs/results/uniform_toys.yaml \
        --cells me:2:deepfm --out docs/results/patience_check_toys.md

`--config` takes a study config's training settings (regularisation, sampler, dataset...);
`--epochs` then replaces its epoch budget and early stopping is switched off; the replay
keeps the config's `min_epochs`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from moc_fast.cli import load_config
from moc_fast.fileio import atomic_write_bytes
from moc_fast.study import StudyConfig, StudyData, run_cell
from moc_fast.train import early_stop

BEAUTY = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2014" / "beauty"
DEFAULT_CELLS = "id-only:1:deepfm,rqvae:3:deepfm,moc-gate:7:deepfm,moc-gate:7:dcnv2"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", help="study YAML/JSON whose settings the cells train with")
    ap.add_argument("--dataset", help=f"dataset folder (default: the config's first, or {BEAUTY})")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cells", default=DEFAULT_CELLS, help="method:scale:backbone,...")
    ap.add_argument("--patience", default="3,5", help="comma-separated patiences to replay")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    patiences = [int(p) for p in args.patience.split(",")]
    base = load_config(args.config)
    dataset = args.dataset or (base.get("datasets") or [str(BEAUTY)])[0]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = StudyConfig.from_dict({
            **base, "datasets": [dataset], "epochs": args.epochs, "patience": args.epochs,
            "out": tmp, "progress": False,
        })  # fmt: skip
        data = StudyData(dataset, cfg)
        rows = []
        for cell in args.cells.split(","):
            method, scale, backbone = cell.split(":")
            scale = int(scale)
            start = time.perf_counter()
            row = run_cell(data, method, scale, backbone, args.seed)
            rows.append((method, scale, backbone, row["val_curve"], time.perf_counter() - start))
    head = "| cell | best epoch / val AUC in all epochs | " + " | ".join(
        f"patience {p}: best / stop, val AUC lost" for p in patiences
    )
    lines = [
        f"# Early-stopping check ({data.name}, seed {args.seed}, {args.epochs} epochs, "
        f"no early stopping{', settings of ' + args.config if args.config else ''})",
        "",
        "Each cell trained for every epoch; the stopping rule replayed on its validation curve.",
        "",
        head + " | val AUC curve |",
        "|---|---|" + "---|" * len(patiences) + "---|",
    ]
    for method, scale, backbone, curve, secs in rows:
        best = max(range(len(curve)), key=curve.__getitem__)
        cols = []
        for p in patiences:
            b, stop = early_stop(curve, p, base.get("min_epochs", 0))
            cols.append(f"{b} / {stop}, {curve[best] - curve[b - 1]:.4f}")
        trace = " ".join(f"{v:.4f}" for v in curve)
        lines.append(
            f"| {method} {scale}x {backbone} ({secs:.0f} s) | {best + 1} / {curve[best]:.4f} | "
            + " | ".join(cols)
            + f" | {trace} |"
        )
    atomic_write_bytes(args.out, ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
