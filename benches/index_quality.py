"""Index quality on real item texts: MoC (M = 1, 2, 3, 7) vs RQ-VAE (L = 1, 2, 3, 7) vs
training-free k-means, plus the latent (per-codebook / shared) and metric (cosine, the default / L2)
ablations at M = 3.

    python benches/index_quality.py --dataset beauty --epochs 30 > benches/index_quality_beauty.md

Embeddings: all-MiniLM-L6-v2 of ../shared/data/amazon2014/<dataset>/item_text.txt (cached).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import moc_fast as mf
from moc_fast.data import embed_texts, read_item_text
from moc_fast.metrics import format_report, index_report

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2014"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="beauty")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--scales", default="1,2,3,7")
    args = p.parse_args()
    _, texts = read_item_text(DATA / args.dataset / "item_text.txt")
    x = embed_texts(texts)
    fit = dict(epochs=args.epochs, batch_size=args.batch_size, progress=False)
    runs: dict[str, object] = {}
    for s in map(int, args.scales.split(",")):
        runs[f"MoC M={s}"] = lambda s=s: mf.MoCIndexer(num_codebooks=s).fit(x, **fit)
        runs[f"RQ-VAE L={s}"] = lambda s=s: mf.RQVAEIndexer(levels=s).fit(x, **fit)
    runs["MoC M=3 shared latent"] = lambda: mf.MoCIndexer(3, latent="shared").fit(x, **fit)
    runs["MoC M=3 L2"] = lambda: mf.MoCIndexer(3, metric="l2").fit(x, **fit)
    runs["k-means K=256"] = lambda: mf.KMeansIndexer(256).fit(x)
    runs["RQ-k-means L=3"] = lambda: mf.RQKMeansIndexer(3).fit(x)
    reports = {}
    for name, make in runs.items():
        t = time.perf_counter()
        idx = make()
        reports[name] = index_report(idx, x)
        reports[name]["fit_seconds"] = round(time.perf_counter() - t, 1)
    print(
        f"## {args.dataset}: {len(x)} items, MiniLM 384-d, K = 256, latent 32, "
        f"{args.epochs} epochs x batch {args.batch_size}, {mf.default_num_threads()} threads\n"
    )
    print(format_report(reports))
    print(
        "\nutilization and perplexity: mean over codebooks (min); discriminability = "
        "H(code tuple) / log N; redundancy = mean pairwise NMI between codebooks."
    )


if __name__ == "__main__":
    main()
