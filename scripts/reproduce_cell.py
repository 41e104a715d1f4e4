"""Rerun finished study cells from scratch and check they reproduce their recorded rows exactly.

Each cell is retrained in a fresh process into a temporary folder with its config's settings,
by default with an empty cache (text embeddings, CTR samples and indexer codes rebuilt), and
its row of `results.csv` and its spectra files are compared with the recorded ones. Every
column must match exactly except `seconds` (wall time). Exits 1 when any cell differs.

    .venv/bin/python scripts/reproduce_cell.py --config docs/results/uniform_beauty.yaml \\
        --cells moc-residual:3:deepfm:1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from moc_fast.cli import load_config
from moc_fast.study import IA_COLUMNS, cell_key, read_results, spectrum_name

WALL_TIME = {"seconds"}


def rerun(config: str, method: str, scale: int, backbone: str, seed: int, out: Path,
          cache: Path | None) -> None:  # fmt: skip
    """`moc-fast study` restricted to one cell, in a child process (a fresh interpreter)."""
    cmd = [
        sys.executable, "-m", "moc_fast.cli", "study", "--config", config, "--methods", method,
        "--scales", str(scale), "--seeds", str(seed), "--out", str(out), "-q",
    ]  # fmt: skip
    if backbone != "-":  # popularity has no backbone ("-"): the config's list is left as is
        cmd += ["--backbones", backbone]
    env = dict(os.environ)
    if cache is not None:
        env["MOC_FAST_CACHE"] = str(cache)
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)  # stderr: its errors


def differences(recorded: dict, fresh: dict, recorded_dir: Path, fresh_dir: Path) -> list[str]:
    """Columns and spectra files where the rerun differs from the record."""
    diffs = [
        f"{col}: recorded {recorded[col]!r}, rerun {fresh.get(col)!r}"
        for col in recorded
        if col not in WALL_TIME and recorded[col] != fresh.get(col)
    ]
    for rep in IA_COLUMNS:  # every representation that may have a spectra file
        name = spectrum_name(recorded, rep)
        a, b = recorded_dir / "spectra" / name, fresh_dir / "spectra" / name
        if a.exists() != b.exists():
            diffs.append(f"spectra/{name}: present in only one of the two runs")
        elif a.exists() and not np.array_equal(np.load(a), np.load(b)):
            diffs.append(f"spectra/{name}: values differ")
    return diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="the study config the cells were run with")
    ap.add_argument("--cells", required=True, help="method:scale:backbone:seed,...")
    ap.add_argument(
        "--keep-cache", action="store_true", help="reuse the cache (embeddings, samples, codes)"
    )
    args = ap.parse_args()
    cfg = load_config(args.config)
    recorded_dir = Path(cfg["out"])
    recorded = read_results(recorded_dir / "results.csv")
    failed = 0
    for cell in args.cells.split(","):
        method, scale, backbone, seed = cell.split(":")
        want = (method, int(scale), backbone, int(seed))
        mine = [r for r in recorded if cell_key(r)[1:] == want]
        if len(mine) != 1:
            print(f"{cell}: {len(mine)} recorded rows in {recorded_dir / 'results.csv'}, need 1")
            failed += 1
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out, cache = Path(tmp) / "out", None if args.keep_cache else Path(tmp) / "cache"
            try:
                rerun(args.config, method, int(scale), backbone, int(seed), out, cache)
            except subprocess.CalledProcessError as e:
                print(f"{cell}: the rerun failed (exit status {e.returncode})")
                failed += 1
                continue
            fresh = [r for r in read_results(out / "results.csv") if cell_key(r)[1:] == want]
            if len(fresh) != 1:
                print(f"{cell}: the rerun wrote {len(fresh)} rows for this cell")
                failed += 1
                continue
            diffs = differences(mine[0], fresh[0], recorded_dir, out)
            status = "reproduced exactly" if not diffs else "DIFFERS"
            print(f"{cell}: {status} (test AUC {fresh[0]['test_auc']}, "
                  f"{fresh[0]['seconds']} s vs {mine[0]['seconds']} s recorded)")  # fmt: skip
            for d in diffs:
                print(f"  {d}")
            failed += bool(diffs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
