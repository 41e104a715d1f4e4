"""Study v2's tuning pass (docs/results/v2/PLAN.md §3): embedding_l2 per method × scale ×
dataset on validation AUC, seed 0, DeepFM; then the v2 run configs with the choices in them.

    python scripts/tune_v2.py                  # resumable; one row per finished cell
    python scripts/tune_v2.py --max-minutes 40 # start no cell after 40 minutes (then resume)
    python scripts/tune_v2.py --write-configs  # choose and write docs/results/v2/<dataset>.yaml

Each tuning cell appends a row to docs/results/v2/tuning/<dataset>.csv (λ, validation AUC,
best epoch; test columns are not written, so no choice can read them). The choice: the λ
with the highest validation AUC, ties to the smaller λ; where the smallest grid value wins, λ
= 0 is tried too; where the largest tried value wins, the next one up (×10, to 1e-1; PLAN.md
amendment A2). An arm whose chosen cell peaked in the last 3 of its epochs gets 45 epochs
for all its v2 cells.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from moc_fast.fileio import atomic_write_bytes, read_csv_rows, write_csv_rows

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "amazon2014"
OUT = ROOT / "docs" / "results" / "v2"
DATASETS = ["beauty", "toys"]
ARMS = [("id-only", 1), ("text-mlp", 1), ("codes-text", 7), ("rqvae", 7), ("moc-residual", 1),
        ("moc-residual", 3), ("moc-residual", 7), ("codes-only", 7)]  # fmt: skip
GRID = [1e-5, 1e-4, 1e-3]
LADDER = [0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]  # A2: the grid extends upward to 1e-1
EPOCHS, LONG_EPOCHS, SEEDS = 30, 45, list(range(8))
COLUMNS = ["dataset", "method", "scale", "embedding_l2", "val_auc", "best_epoch", "epochs",
           "seconds"]  # fmt: skip
BASE = dict(embed_dim=16, epochs=EPOCHS, patience=3, min_epochs=10, batch_size=4096, lr=1e-3,
            negatives=1, sampler="uniform", index_epochs=30, dropout=0.2, net_l2=0.0,
            vary_data=True, me_l2_per_set=True)  # fmt: skip


def tuning_cells(rows: list[dict]) -> list[tuple[str, int, float]]:
    """The (method, scale, λ) cells still to run for one dataset's rows, arm by arm: the grid,
    then, while an arm's best λ is the largest it tried, the next value up the ladder (to
    1e-1, amendment A2), or λ = 0 where its best is the smallest grid value."""
    todo = []
    for m, s in ARMS:
        tried = {float(r["embedding_l2"]) for r in rows
                 if r["method"] == m and int(r["scale"]) == s}  # fmt: skip
        missing = [(m, s, lam) for lam in GRID if lam not in tried]
        if missing:
            todo += missing
            continue
        best = choose(rows, m, s)[0]
        if best == max(tried) and best < LADDER[-1]:
            todo.append((m, s, LADDER[LADDER.index(best) + 1]))
        elif best == min(GRID) and 0.0 not in tried:
            todo.append((m, s, 0.0))
    return todo


def choose(rows: list[dict], method: str, scale: int) -> tuple[float, int]:
    """(λ, epochs) for one arm: best validation AUC, ties to the smaller λ; 45 epochs when the
    chosen run peaked in the last 3 epochs."""
    arm = [r for r in rows if r["method"] == method and int(r["scale"]) == scale]
    if not arm:
        raise ValueError(f"no tuning rows for {method} {scale}x")
    best = max(arm, key=lambda r: (float(r["val_auc"]), -float(r["embedding_l2"])))
    capped = int(best["best_epoch"]) > EPOCHS - 3
    return float(best["embedding_l2"]), LONG_EPOCHS if capped else EPOCHS


def run(dataset: str, deadline: float = float("inf")) -> bool:
    """Run `dataset`'s remaining cells; False if it stopped at `deadline` (time.monotonic)
    with cells left."""
    from moc_fast.study import StudyConfig, StudyData, train_cell

    path = OUT / "tuning" / f"{dataset}.csv"
    rows = read_csv_rows(path)
    ds = None
    while todo := tuning_cells(rows):
        if time.monotonic() >= deadline:
            return False
        method, scale, lam = todo[0]
        cfg = StudyConfig(**BASE, datasets=[str(DATA / dataset)], methods=[method],
                          scales=[scale], embedding_l2=lam, out=str(OUT / "tuning"))  # fmt: skip
        if ds is None:
            ds = StudyData(str(DATA / dataset), cfg)
        ds.cfg = cfg
        row, _ = train_cell(ds, method, scale, "deepfm", 0)
        kept = {k: row[k] for k in ("val_auc", "best_epoch", "epochs", "seconds")}
        rows.append({"dataset": dataset, "method": method, "scale": scale, "embedding_l2": lam,
                     **kept})  # fmt: skip
        write_csv_rows(path, rows, COLUMNS)
        print(json.dumps(rows[-1]), flush=True)
    return True


def write_configs() -> None:
    """docs/results/v2/<dataset>.yaml from the finished tuning rows."""
    for dataset in DATASETS:
        rows = read_csv_rows(OUT / "tuning" / f"{dataset}.csv")
        if tuning_cells(rows):
            raise SystemExit(f"tuning of {dataset} is not finished")
        l2, epochs = {}, {}
        for m, s in ARMS:
            lam, ep = choose(rows, m, s)
            l2[f"{m}:{s}"] = lam
            if ep != EPOCHS:
                epochs[f"{m}:{s}"] = ep
        methods = sorted({m for m, _ in ARMS}, key=[m for m, _ in ARMS].index)
        cfg = {**BASE, "datasets": [f"../shared/data/amazon2014/{dataset}"], "methods": methods,
               "scales": [1, 3, 7], "backbones": ["deepfm", "dcnv2"], "seeds": SEEDS,
               "scales_by": {"rqvae": [7], "codes-text": [7], "codes-only": [7]},
               "ranking_negatives": 99, "save_predictions": True,
               "embedding_l2_by": l2, "epochs_by": epochs,
               "out": f"docs/results/v2/{dataset}"}  # fmt: skip
        text = "# Study v2, primary arms (docs/results/v2/PLAN.md), by scripts/tune_v2.py\n"
        text += "\n".join(f"{k}: {json.dumps(v)}" for k, v in cfg.items()) + "\n"
        atomic_write_bytes(OUT / f"{dataset}.yaml", text.encode())
        print(f"wrote {OUT / f'{dataset}.yaml'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--write-configs", action="store_true")
    parser.add_argument("--max-minutes", type=float, default=float("inf"),
                        help="start no new cell after this many minutes")  # fmt: skip
    args = parser.parse_args(argv)
    deadline = time.monotonic() + 60 * args.max_minutes
    if args.write_configs:
        write_configs()
        return 0
    for dataset in args.datasets.split(","):
        if not run(dataset, deadline):
            print(f"stopped at --max-minutes {args.max_minutes:g}; rerun to resume", flush=True)
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
