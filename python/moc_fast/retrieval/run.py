"""The retrieval study (`moc-fast retrieval --config`): cells of dataset × method × scale ×
seed, each trained with early stopping on validation NDCG@10 and tested once, written to
`results.csv` as it goes (a rerun skips finished cells) with its training curve, and a
`report.md` with tables and curves.

Methods: `popularity`, `sasrec` (item IDs), `parallel-moc` (the parallel decoder on MoC codes,
at each `moc_scales` codebook count), `parallel-kmeans` (one k-means code, plus item IDs),
and `tiger-rqvae` (TIGER on RQ-VAE codes + collision suffix, at each `rqvae_levels` depth).
"""

from __future__ import annotations

import io
import json
import logging
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moc_fast.data.datasets import TEXT_FIELDS
from moc_fast.fileio import atomic_write_bytes, read_csv_rows, write_csv_rows
from moc_fast.retrieval.metrics import metrics_from_ranks
from moc_fast.retrieval.protocol import RetrievalSplits, build_splits

log = logging.getLogger(__name__)

METHODS = ("popularity", "sasrec", "parallel-moc", "parallel-kmeans", "tiger-rqvae")
COLUMNS = ["dataset", "method", "scale", "seed", "cold_share", "test_recall@5", "test_ndcg@5",
           "test_recall@10", "test_ndcg@10", "val_ndcg@10", "cold_users", "cold_recall@10",
           "best_epoch", "epochs_run", "seconds_per_epoch", "decode_ms_per_user",
           "invalid_items", "parameters", "code_collision_rate"]  # fmt: skip


@dataclass
class RetrievalConfig:
    """Everything a run depends on; `from_dict` rejects unknown keys."""

    datasets: list[str] = field(default_factory=lambda: ["synthetic"])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    moc_scales: list[int] = field(default_factory=lambda: [1, 2, 3, 7])
    rqvae_levels: list[int] = field(default_factory=lambda: [3, 4])
    seeds: list[int] = field(default_factory=lambda: [0])
    cold_share: float = 0.0  # items held out of training (cold-start recall); 0: none
    dim: int = 64
    layers: int = 2
    heads: int = 1
    dropout: float = 0.3
    id_embedding: bool = False  # the parallel decoder's inputs: codes, plus an item-ID table
    parallel_loss: str = "codes"  # the parallel decoder's loss: per-code heads, or "items"
    tiger_dim: int = 64
    tiger_layers: int = 2
    tiger_heads: int = 2
    beam: int = 20
    epochs: int = 50
    tiger_epochs: int = 20
    patience: int = 5
    batch_size: int = 256
    lr: float = 1e-3
    val_limit: int | None = None  # validation users per epoch (all if None); test uses all
    codebook_size: int = 256
    index_epochs: int = 30
    index_batch_size: int = 512
    text_model: str = "all-MiniLM-L6-v2"
    text_fields: list[str] = field(default_factory=lambda: list(TEXT_FIELDS))
    out: str = "retrieval_out"
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown retrieval method(s) {unknown}; known: {list(METHODS)}")
        if self.parallel_loss not in ("codes", "items"):
            raise ValueError(
                f"parallel_loss must be 'codes' or 'items', got {self.parallel_loss!r}"
            )
        if not 0.0 <= self.cold_share < 1.0:
            raise ValueError(f"cold_share must be in [0, 1), got {self.cold_share}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RetrievalConfig:
        from moc_fast.study import config_from_dict

        return config_from_dict(cls, d, "retrieval")

    def cells(self) -> list[tuple[str, str, int, int]]:
        out = []
        for ds in self.datasets:
            for m in self.methods:
                scales = {"parallel-moc": self.moc_scales, "tiger-rqvae": self.rqvae_levels}
                for scale in scales.get(m, [1]):
                    out += [(ds, m, int(scale), int(seed)) for seed in self.seeds]
        return out


class Dataset:
    """One dataset's interactions, splits (per cold share), item embeddings and codes."""

    def __init__(self, spec: str, cfg: RetrievalConfig) -> None:
        from moc_fast.data.datasets import open_dataset

        self.cfg = cfg
        self.data = open_dataset(spec)
        self.name = self.data.name
        self._splits: dict[int, RetrievalSplits] = {}
        self._emb: np.ndarray | None = None

    def splits(self, seed: int) -> RetrievalSplits:
        # The cold items are drawn per seed; without any, every seed has the same splits.
        key = seed if self.cfg.cold_share else 0
        if key not in self._splits:
            self._splits[key] = build_splits(self.data, self.cfg.cold_share, seed)
        return self._splits[key]

    def codes(self, family: str, scale: int, seed: int) -> tuple[np.ndarray, dict[str, float]]:
        from moc_fast.study import indexed_codes

        if self._emb is None:
            from moc_fast.data.text import embed_texts

            texts = self.data.item_text(self.cfg.text_fields)
            self._emb = embed_texts(texts, self.cfg.text_model, progress=self.cfg.progress)
        c = self.cfg
        return indexed_codes(self.name, self._emb, family, scale, c.codebook_size, seed,
                             c.index_epochs, c.index_batch_size, None, c.progress)  # fmt: skip


def build_model(ds: Dataset, method: str, scale: int, seed: int):
    """The model of a cell, and the collision rate of its codes (None without codes)."""
    from moc_fast.retrieval.models import ParallelDecoder, Popularity, SASRec
    from moc_fast.retrieval.tiger import TIGER

    c, s = ds.cfg, ds.splits(seed)
    torch.manual_seed(seed)
    if method == "popularity":
        return Popularity(torch.as_tensor(s.train_counts())), None
    if method == "sasrec":
        return SASRec(s.num_items, c.dim, c.layers, c.heads, c.dropout), None
    if method in ("parallel-moc", "parallel-kmeans"):
        family = "moc" if method == "parallel-moc" else "kmeans"
        codes, metrics = ds.codes(family, scale, seed)
        k = int(codes.max()) + 1
        torch.manual_seed(seed)
        model = ParallelDecoder(torch.as_tensor(codes), k, c.dim, c.layers, c.heads, c.dropout,
                                id_embedding=c.id_embedding or family == "kmeans",
                                loss=c.parallel_loss)  # fmt: skip
        return model, metrics["collision_rate"]
    if method == "tiger-rqvae":
        codes, metrics = ds.codes("rqvae", scale, seed)  # levels + the collision suffix
        vocab = [int(v) + 1 for v in codes.max(0)]
        torch.manual_seed(seed)
        model = TIGER(torch.as_tensor(codes), vocab, c.tiger_dim, c.tiger_layers, c.tiger_heads,
                      c.dropout)  # fmt: skip
        return model, metrics["collision_rate"]
    raise ValueError(f"unknown retrieval method {method!r}: expected one of {list(METHODS)}")


def run_cell(ds: Dataset, method: str, scale: int, seed: int) -> tuple[dict[str, Any], list]:
    """Train, test and time one cell: its results row and its training curve."""
    from moc_fast.retrieval.train import evaluate, fit

    c, s = ds.cfg, ds.splits(seed)
    model, collisions = build_model(ds, method, scale, seed)
    label = f"{ds.name} {method} {scale}x seed {seed}"
    epochs = c.tiger_epochs if method.startswith("tiger") else c.epochs
    result = fit(model, s.train, s.val, epochs=epochs, batch_size=c.batch_size, lr=c.lr,
                 patience=c.patience, seed=seed, val_limit=c.val_limit, progress=c.progress,
                 desc=label)  # fmt: skip
    start = time.perf_counter()
    test, ranks = evaluate(model, s.test, beam=c.beam)
    decode_ms = 1e3 * (time.perf_counter() - start) / max(1, len(s.test))
    cold_rows = s.cold[s.test.target]
    cold = metrics_from_ranks(ranks[cold_rows]) if cold_rows.any() else {}
    row = {
        "dataset": ds.name, "method": method, "scale": scale, "seed": seed,
        "cold_share": c.cold_share, **{f"test_{k}": v for k, v in test.items()},
        "val_ndcg@10": result.best_val.get("ndcg@10", float("nan")),
        "cold_users": int(cold_rows.sum()), "cold_recall@10": cold.get("recall@10", ""),
        "best_epoch": result.best_epoch, "epochs_run": len(result.curve),
        "seconds_per_epoch": round(result.seconds_per_epoch(), 2),
        "decode_ms_per_user": round(decode_ms, 3),
        "invalid_items": int(test.get("invalid_items", 0)),
        "parameters": sum(p.numel() for p in model.parameters()),
        "code_collision_rate": "" if collisions is None else collisions,
    }  # fmt: skip
    return row, result.curve


def run(cfg: RetrievalConfig) -> list[dict[str, Any]]:
    """Every cell not yet in `out/results.csv`, written after each; then the report."""
    out = Path(cfg.out)
    (out / "curves").mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "config.json", json.dumps(asdict(cfg), indent=2).encode())
    rows = read_csv_rows(out / "results.csv")
    done = {(r["dataset"], r["method"], int(r["scale"]), int(r["seed"])) for r in rows}
    datasets: dict[str, Dataset] = {}
    todo = cfg.cells()
    for i, (spec, method, scale, seed) in enumerate(todo, 1):
        ds = datasets.get(spec) or datasets.setdefault(spec, Dataset(spec, cfg))
        if (ds.name, method, scale, seed) in done:
            continue
        log.info("cell %d/%d: %s %s %dx seed %d", i, len(todo), ds.name, method, scale, seed)
        row, curve = run_cell(ds, method, scale, seed)
        rows.append(row)
        name = f"{ds.name}-{method}-{scale}-s{seed}.json"
        atomic_write_bytes(out / "curves" / name, json.dumps(curve, indent=1).encode())
        write_csv_rows(out / "results.csv", rows, COLUMNS)
    write_report(out, rows, _peak_mb())
    return rows


def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM: `ru_maxrss` carries a forking parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_report(out: Path, rows: list[dict[str, Any]], peak_mb: float) -> None:
    """`report.md`: mean ± std over seeds per (dataset, method, scale), and the curves."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"], int(r["scale"])), []).append(r)
    cols = ["test_recall@5", "test_ndcg@5", "test_recall@10", "test_ndcg@10"]
    lines = ["# Retrieval results", "",
             "Full ranking over all items, leave-one-out (last item: test; second last: "
             "validation), history cut to 20, early stop on validation NDCG@10. Mean ± std "
             "over seeds (n = seeds).", "",
             "| dataset | method | scale | n | R@5 | N@5 | R@10 | N@10 | cold R@10 | best epoch "
             "| s/epoch | decode ms/user | invalid |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (ds, method, scale), rs in sorted(groups.items()):
        cells = []
        for col in [*cols, "cold_recall@10"]:
            v = np.array([float(r[col]) for r in rs if r.get(col) not in ("", None)])
            cells.append(f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0:.4f}"
                         if len(v) else "–")  # fmt: skip
        extra = ["/".join(str(r["best_epoch"]) for r in rs),
                 f"{np.mean([float(r['seconds_per_epoch']) for r in rs]):.1f}",
                 f"{np.mean([float(r['decode_ms_per_user']) for r in rs]):.2f}",
                 str(sum(int(float(r["invalid_items"])) for r in rs))]  # fmt: skip
        head = f"| {ds} | {method} | {scale} | {len(rs)} | "
        lines.append(head + " | ".join(cells + extra) + " |")
    lines += ["", f"Peak RSS of the run: {peak_mb:.0f} MB.", ""]
    if _plot_curves(out):
        lines += ["![validation NDCG@10 per epoch](curves.png)", ""]
    atomic_write_bytes(out / "report.md", "\n".join(lines).encode())


def _plot_curves(out: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    files = sorted((out / "curves").glob("*.json"))
    if not files:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for f in files:
        curve = json.loads(f.read_text())
        if len(curve) > 1:
            ax.plot([c["epoch"] for c in curve], [c["val_ndcg@10"] for c in curve], label=f.stem)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NDCG@10")
    ax.legend(fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out / "curves.png", buf.getvalue())
    return True
