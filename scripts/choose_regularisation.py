"""Choose the study's regularisation on validation AUC with ID-only, per dataset, before the run.

    python scripts/choose_regularisation.py --datasets ../shared/data/amazon2014/beauty,... \\
        --out docs/results/regularisation.md

Trains ID-only (DeepFM by default) under each setting of `embedding_l2` × `net_l2` (dropout
fixed), seed 0, and writes a table of validation AUC / logloss and test logloss per setting
with the one chosen on validation AUC marked. Test numbers are shown, never used to choose.
The chosen setting is then fixed for every method of the study (docs/results/*.yaml).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from moc_fast.data.protocol import SAMPLERS
from moc_fast.fileio import atomic_write_bytes
from moc_fast.study import StudyConfig, StudyData, train_cell
from moc_fast.train import evaluate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", required=True, help="comma-separated dataset folders")
    parser.add_argument("--backbone", default="deepfm", help="the backbone to tune with")
    parser.add_argument("--embedding-l2", default="0,1e-6,1e-5,1e-4", help="values to try")
    parser.add_argument("--net-l2", default="0", help="values to try")
    parser.add_argument("--dropout", type=float, default=0.2, help="fixed dropout")
    parser.add_argument("--epochs", type=int, default=20, help="max epochs (early stopping)")
    parser.add_argument("--min-epochs", type=int, default=0, help="no early stop before this")
    parser.add_argument("--sampler", default="uniform", choices=SAMPLERS, help="negatives")
    parser.add_argument("--out", required=True, help="markdown file to write")
    args = parser.parse_args(argv)
    grid = [(float(e), float(n)) for e in args.embedding_l2.split(",")
            for n in args.net_l2.split(",")]  # fmt: skip
    lines = [
        f"# Regularisation chosen on validation AUC (ID-only, seed 0, {args.sampler} negatives)",
        "",
        f"`python scripts/choose_regularisation.py --datasets {args.datasets} --backbone "
        f"{args.backbone} --embedding-l2 {args.embedding_l2} --net-l2 {args.net_l2} --dropout "
        f"{args.dropout} --epochs {args.epochs} --min-epochs {args.min_epochs} --sampler "
        f"{args.sampler}`. ln 2 = {math.log(2):.4f}: a logloss above it "
        "is worse than always predicting 0.5.",
        "",
        "| dataset | embedding_l2 | net_l2 | val AUC | val logloss | test AUC | test logloss "
        "| best epoch | chosen |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for spec in args.datasets.split(","):
        results = []
        ds = None
        for emb, net in grid:
            cfg = StudyConfig(datasets=[spec], epochs=args.epochs, embedding_l2=emb, net_l2=net,
                              dropout=args.dropout, min_epochs=args.min_epochs,
                              sampler=args.sampler, progress=False)  # fmt: skip
            ds = StudyData(spec, cfg) if ds is None else ds
            ds.cfg = cfg
            row, model = train_cell(ds, "id-only", 1, args.backbone, 0)
            val = evaluate(model, _with_items(ds))
            results.append((emb, net, row, val))
            print(f"{ds.name} emb {emb:g} net {net:g}: val AUC {row['val_auc']:.4f}, "
                  f"test logloss {row['test_logloss']:.4f}", flush=True)  # fmt: skip
        best = max(results, key=lambda r: r[2]["val_auc"])
        for emb, net, row, val in results:
            mark = "**chosen**" if (emb, net) == best[:2] else ""
            lines.append(f"| {ds.name} | {emb:g} | {net:g} | {row['val_auc']:.4f} | "
                         f"{val['logloss']:.4f} | {row['test_auc']:.4f} | "
                         f"{row['test_logloss']:.4f} | {row['best_epoch']} | {mark} |")  # fmt: skip
    atomic_write_bytes(Path(args.out), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    return 0


def _with_items(ds):
    from moc_fast.study import _with_items as join

    return join(ds.splits.val, None, None)


if __name__ == "__main__":
    raise SystemExit(main())
