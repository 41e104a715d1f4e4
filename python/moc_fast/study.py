"""The scaling study: methods × scales × backbones × seeds, resumable, to results.csv.

Every cell trains one CTR model and appends one row; finished cells are never rerun. Data,
CTR samples, text embeddings and indexers are built once per dataset (and per method and
scale for indexers) and shared across backbones and seeds.
"""

from __future__ import annotations

from moc_fast._extras import require

require("torch", "safetensors", "tqdm", feature="moc_fast.study")

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moc_fast.data.datasets import TEXT_FIELDS
from moc_fast.fileio import (
    atomic_save_npy,
    atomic_save_npz,
    atomic_write_bytes,
    cache_dir,
    read_csv_rows,
    write_csv_rows,
)
from moc_fast.methods import FAMILY, METHODS, SCALED, canonical, fusion  # noqa: F401 (re-export)

log = logging.getLogger(__name__)

COLUMNS = [
    "dataset",
    "method",
    "scale",
    "backbone",
    "seed",
    "val_auc",
    "test_auc",
    "test_logloss",
    "best_epoch",
    "epochs",
    "seconds",
    "discriminability",
    "redundancy",
    "collision_rate",
    "utilization",
    "info_abundance",
    "ia_collision",
    "ia_fused",
    "ia_item_id",
    "auc_items_0",
    "auc_items_1_2",
    "auc_items_3_9",
    "auc_items_10plus",
    "hr_10",
    "ndcg_10",
    "item_bytes",
]


@dataclass
class StudyConfig:
    """The grid and its training settings (`moc-fast study --config` reads these keys)."""

    datasets: list[str] = field(default_factory=lambda: ["synthetic"])
    methods: list[str] = field(default_factory=lambda: ["id-only", "me", "rqvae", "moc-gate"])
    scales: list[int] = field(default_factory=lambda: [1, 2, 3, 7])
    backbones: list[str] = field(default_factory=lambda: ["deepfm"])
    seeds: list[int] = field(default_factory=lambda: [0])
    embed_dim: int = 16
    epochs: int = 20
    patience: int = 3
    min_epochs: int = 0  # no early stop before this epoch (warm-up; see fit_ctr)
    batch_size: int = 4096
    lr: float = 1e-3
    embedding_l2: float = 0.0  # λ on Σ‖embedding tables‖² (FuxiCTR's embedding_regularizer)
    net_l2: float = 0.0  # λ on Σ‖other weight matrices‖² (FuxiCTR's net_regularizer)
    dropout: float = 0.2  # in the backbones' deep networks
    negatives: int = 1
    sampler: str = "uniform"  # or "split-matched": see moc_fast.data.protocol.build_ctr
    # v2: each seed draws its own CTR samples (negatives, so the test sample too); v1 drew
    # them with seed 0 for every seed, leaving test-sampling error out of its intervals
    vary_data: bool = False
    # > 0: HR@10 / NDCG@10 of each test positive among this many sampled negatives (v2: 99)
    ranking_negatives: int = 0
    # per-method settings chosen on validation (v2 tunes λ per method × scale): keys
    # "method:scale" or "method", values override embedding_l2 / epochs for those cells
    embedding_l2_by: dict[str, float] = field(default_factory=dict)
    epochs_by: dict[str, int] = field(default_factory=dict)
    # the scales a scaled method runs at, when not all of `scales` (v2: RQ-VAE at 7x only)
    scales_by: dict[str, list[int]] = field(default_factory=dict)
    # ME averages its s sets, so each set's data gradient is 1/s of the total while its L2
    # gradient is not: True divides λ by s (v2); False applies λ to every set (v1)
    me_l2_per_set: bool = False
    # keep each cell's test predictions (fp16, out/predictions/<cell>.npy, in test order) for
    # the paired bootstrap over test users (moc_fast.stats.paired_bootstrap_auc)
    save_predictions: bool = False
    codebook_size: int = 256
    index_epochs: int = 30
    index_batch_size: int = 512
    max_users: int | None = None  # a slice: the first users and the items they touched
    text_model: str = "all-MiniLM-L6-v2"  # see moc_fast.data.text.get_encoder
    text_fields: list[str] = field(default_factory=lambda: list(TEXT_FIELDS))
    out: str = "study_out"
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        from moc_fast.data.protocol import SAMPLERS
        from moc_fast.nn.backbones import BACKBONES

        self.methods = [canonical(m) for m in self.methods]
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        for b in self.backbones:
            if b.lower() not in BACKBONES:
                raise ValueError(f"unknown backbone {b!r}: expected one of {sorted(BACKBONES)}")
        if self.min_epochs < 0:
            raise ValueError(f"min_epochs must be >= 0, got {self.min_epochs}")
        if not self.scales or min(self.scales) < 1:
            raise ValueError(f"scales must be integers >= 1, got {self.scales}")
        if self.ranking_negatives < 0:
            raise ValueError(f"ranking_negatives must be >= 0, got {self.ranking_negatives}")
        for method, scales in self.scales_by.items():
            if not set(scales) <= set(self.scales):
                raise ValueError(f"scales_by[{method!r}] = {scales} is not within scales "
                                 f"{self.scales}")  # fmt: skip
        tables = (("embedding_l2_by", self.embedding_l2_by), ("epochs_by", self.epochs_by),
                  ("scales_by", self.scales_by))  # fmt: skip
        for name, table in tables:
            for key in table:
                if canonical(key.split(":")[0]) not in self.methods:
                    raise ValueError(f"{name} key {key!r} names no method of this study "
                                     f"({self.methods})")  # fmt: skip

    def setting(self, table: dict[str, Any], method: str, scale: int, default: Any) -> Any:
        """A per-method override: "method:scale" first, then "method", else `default`."""
        return table.get(f"{method}:{scale}", table.get(method, default))

    def l2_for(self, method: str, scale: int) -> float:
        lam = self.setting(self.embedding_l2_by, method, scale, self.embedding_l2)
        return lam / scale if method == "me" and self.me_l2_per_set else lam

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudyConfig:
        return config_from_dict(cls, d, "study")


def config_from_dict(cls: Any, d: dict[str, Any], what: str) -> Any:
    """The dataclass `cls` from `d`, an unknown key (a typo) being a clear error."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what} config key(s) {unknown}; known: {sorted(known)}")
    return cls(**d)


CODES_CACHE_VERSION = 2  # 2: keyed by a hash of the full recipe, seed included


def spectrum_name(row: dict[str, Any], representation: str = "codes") -> str:
    """The file under `out/spectra` holding a run's normalised spectrum of one representation
    (`codes`: the code tables; `collision`, `fused`, `item_id`: see `representation_abundance`)."""
    suffix = "" if representation == "codes" else f"-{representation}"
    name = f"{row['dataset']}-{row['method']}-{row['scale']}-{row['backbone']}-{row['seed']}"
    return f"{name}{suffix}.npy"


def cell_key(row: dict[str, Any]) -> tuple:
    return (row["dataset"], row["method"], int(row["scale"]), row["backbone"], int(row["seed"]))


def read_results(path: Path) -> list[dict[str, Any]]:
    return read_csv_rows(path)


def write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    write_csv_rows(path, rows, COLUMNS)


def information_abundance(table: np.ndarray) -> tuple[float, np.ndarray]:
    """IA = ‖σ‖₁ / ‖σ‖∞ of an embedding table (Guo et al.) and its normalised spectrum."""
    s = np.linalg.svd(table.astype(np.float64), compute_uv=False)
    if s.size == 0 or s[0] == 0:
        return 0.0, s
    return float(s.sum() / s[0]), s / s[0]


class StudyData:
    """What a dataset's cells share: interactions, CTR splits, text embeddings, codes."""

    def __init__(self, spec: str, cfg: StudyConfig) -> None:
        from moc_fast.data.datasets import open_dataset
        from moc_fast.train import items_by_training_count

        self.cfg = cfg
        self.data = open_dataset(spec)
        if cfg.max_users:
            self.data = self.data.subset_users(cfg.max_users)
        self.name = self.data.name
        self._splits: dict[int, Any] = {}
        self._ranking: dict[int, Any] = {}
        self.splits = self.splits_for(0)
        self.item_counts = items_by_training_count(self.splits.train, self.splits.num_items)
        self._emb: np.ndarray | None = None
        self._codes: dict[tuple[str, int], tuple[np.ndarray, dict[str, float]]] = {}

    def splits_for(self, seed: int):
        """The CTR samples of a seed: its own draw with `vary_data`, else seed 0's (v1). The
        positives and so the item counts are the same for every draw."""
        from moc_fast.data.protocol import build_ctr

        key = seed if self.cfg.vary_data else 0
        if key not in self._splits:
            self._splits[key] = build_ctr(self.data, negatives=self.cfg.negatives, seed=key,
                                          cache=True, sampler=self.cfg.sampler)  # fmt: skip
        return self._splits[key]

    def ranking_for(self, seed: int):
        """The ranking candidates of a seed's test positives (`ranking_negatives` each)."""
        from moc_fast.data.protocol import ranking_candidates

        key = seed if self.cfg.vary_data else 0
        if key not in self._ranking:
            self._ranking[key] = ranking_candidates(
                self.data, self.splits_for(seed).test, self.cfg.ranking_negatives, key
            )
        return self._ranking[key]

    def embeddings(self) -> np.ndarray:
        if self._emb is None:
            from moc_fast.data.text import embed_texts

            texts = self.data.item_text(self.cfg.text_fields)
            self._emb = embed_texts(texts, self.cfg.text_model, progress=self.cfg.progress)
        return self._emb

    def codes(
        self, family: str, scale: int, seed: int = 0
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Item codes of an indexer trained once per (family, scale, seed) (`indexed_codes`)."""
        key = (family, scale, seed)
        if key not in self._codes:
            c = self.cfg
            self._codes[key] = indexed_codes(
                self.name, self.embeddings(), family, scale, c.codebook_size, seed,
                c.index_epochs, c.index_batch_size, c.device, c.progress,
            )  # fmt: skip
        return self._codes[key]


def indexed_codes(
    name: str,
    x: np.ndarray,
    family: str,
    scale: int,
    codebook_size: int,
    seed: int = 0,
    index_epochs: int = 30,
    index_batch_size: int = 512,
    device: str | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, dict[str, float]]:
    """Codes of the items `x` from a `family` indexer at `scale`, and its index metrics, cached
    on disk under a hash of everything that determines them: the indexer's class and full
    config (seed included), its training settings, the input embeddings and the package
    version."""
    import moc_fast as mf

    k = min(codebook_size, len(x))
    cls = build_indexer(family, scale, k, seed)
    trained = family in ("moc", "rqvae")
    fit_args = {"epochs": index_epochs, "batch_size": max(index_batch_size, k)}
    recipe = {
        "indexer": type(cls).__name__,
        "config": getattr(cls, "config", None) or repr(cls),
        "fit": fit_args if trained else {},
        "embeddings": hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest(),
        "shape": list(x.shape),
        "moc_fast": mf.__version__,
        "format": CODES_CACHE_VERSION,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode())
    tag = f"{name}-{family}-{scale}-s{seed}-{digest.hexdigest()[:16]}"
    cache = cache_dir() / "codes" / f"{tag}.npz"  # large: kept out of the results folder
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        return z["codes"], json.loads(str(z["metrics"]))
    from moc_fast.metrics import index_report

    cls.fit(
        x,
        epochs=fit_args["epochs"] if trained else None,
        batch_size=fit_args["batch_size"],
        device=device,
        progress=progress,
        **({"desc": f"{name} {family} {scale}x seed {seed} indexer"} if trained else {}),
    )
    if trained:
        cls.cpu()
    rep = index_report(cls, x)
    metrics = {
        "discriminability": rep["discriminability"],
        "redundancy": rep["redundancy"],
        "collision_rate": rep["collision_rate"],
        "utilization": float(np.mean(rep["utilization"])),
    }
    codes = cls.encode(x)
    atomic_save_npz(cache, codes=codes, metrics=np.array(json.dumps(metrics)))
    return codes, metrics


def build_indexer(family: str, scale: int, codebook_size: int, seed: int = 0):
    """The indexer of a method family at a scale (codebooks, levels; k-means has one code)."""
    import moc_fast as mf

    if family == "moc":
        return mf.MoCIndexer(num_codebooks=scale, codebook_size=codebook_size, seed=seed)
    if family == "rqvae":
        return mf.RQVAEIndexer(levels=scale, codebook_size=codebook_size, seed=seed)
    if family == "kmeans":
        return mf.KMeansIndexer(codebook_size=codebook_size, seed=seed)
    if family == "rq-kmeans":
        return mf.RQKMeansIndexer(levels=scale, codebook_size=codebook_size, seed=seed)
    families = sorted(set(FAMILY.values()))
    raise ValueError(f"unknown indexer family {family!r}: expected one of {families}")


def item_table_rows(method: str, scale: int, num_items: int) -> int | None:
    """Rows of the item-ID table when a method shrinks it: one row for `codes-only` (the
    codes replace it), ⌈N/s⌉ hashed rows for `hashed-id` at scale s; None: one row per item."""
    if method == "codes-only":
        return 1
    if method == "hashed-id":
        return -(-num_items // scale)
    return None


def hash_items(items: torch.Tensor, rows: int) -> torch.Tensor:
    """The hashing trick's bucket of each item ID: a multiplicative (Knuth) hash mod `rows`,
    so neighbouring IDs scatter instead of sharing rows in runs."""
    return (items.to(torch.int64) * 2_654_435_761 % 2**32) % rows


def _with_items(part, codes: np.ndarray | None, dense: np.ndarray | None,
                rows: int | None = None):  # fmt: skip
    """A split with each sample's item codes and text joined; with `rows`, every item ID is
    hashed into that many rows (one row: `codes-only`; ⌈N/s⌉: `hashed-id`)."""
    from moc_fast.train import CTRData

    items = part.extra["items"]
    x = part.x
    if rows is not None:
        x = x.clone()
        x[:, 1] = hash_items(x[:, 1], rows)
    return CTRData(
        x,
        part.y,
        None if codes is None else torch.from_numpy(codes)[items],
        None if dense is None else torch.from_numpy(dense)[items],
        part.extra,
    )


def run_cell(ds: StudyData, method: str, scale: int, backbone: str, seed: int) -> dict[str, Any]:
    """Train and test one model; the row for results.csv."""
    return train_cell(ds, method, scale, backbone, seed)[0]


def cell_label(row: dict[str, Any]) -> str:
    """How progress names a cell: `beauty moc-gate 3x deepfm seed 0`."""
    return f"{row['dataset']} {row['method']} {row['scale']}x {row['backbone']} seed {row['seed']}"


def train_cell(
    ds: StudyData,
    method: str,
    scale: int,
    backbone: str,
    seed: int,
    codes: np.ndarray | None = None,
    metrics: dict[str, float] | None = None,
) -> tuple[dict[str, Any], Any]:
    """Train and test one model: (the row for results.csv, the trained model or None for
    popularity). `codes` (items × M) replaces the study's own indexer for a code method."""
    from moc_fast.data.protocol import popularity_scores
    from moc_fast.nn import CTRModel
    from moc_fast.train import (
        auc_by_item_count,
        auc_score,
        fit_ctr,
        hit_ndcg_at_k,
        predict,
        score_predictions,
    )

    cfg, sp = ds.cfg, ds.splits_for(seed)
    row: dict[str, Any] = {
        "dataset": ds.name,
        "method": method,
        "scale": scale,
        "backbone": backbone,
        "seed": seed,
    }
    start = time.perf_counter()  # train + test only: indexers are built outside (and cached)
    if method == "popularity":
        test_scores = popularity_scores(sp, sp.test)
        counts = ds.item_counts[sp.test.extra["items"].numpy()]
        row.update(auc_by_item_count(sp.test.y.numpy(), test_scores, counts))
        if cfg.ranking_negatives:
            scores = popularity_scores(sp, ds.ranking_for(seed))
            row.update(hit_ndcg_at_k(scores.reshape(-1, cfg.ranking_negatives + 1), 10))
        row["item_bytes"] = 0
        row.update(
            val_auc=auc_score(sp.val.y.numpy(), popularity_scores(sp, sp.val)),
            test_auc=auc_score(sp.test.y.numpy(), test_scores),
            test_logloss=math.nan,
            best_epoch=0,
            epochs=0,
        )
        row["seconds"] = round(time.perf_counter() - start, 2)
        return row, None
    rows = item_table_rows(method, scale, sp.field_dims[1])  # codes-only, hashed-id: fewer rows
    model_cfg: dict[str, Any] = {
        "field_dims": sp.field_dims if rows is None else [sp.field_dims[0], rows,
                                                           *sp.field_dims[2:]],  # fmt: skip
        "embed_dim": cfg.embed_dim,
        "backbone": backbone,
        "backbone_kwargs": {"dropout": cfg.dropout},
    }
    dense = None
    if method == "text-mlp":
        dense = ds.embeddings()
        model_cfg["dense_dim"] = dense.shape[1]
    elif method == "me":
        # Guo et al.'s ME scales every field, the semantic code of the 1x indexer included.
        if codes is None:
            codes, metrics = ds.codes("moc", 1, seed)
        row.update(metrics or {})
        model_cfg.update(num_sets=scale, num_codebooks=codes.shape[1],
                         codebook_size=int(codes.max()) + 1, fusion="none")  # fmt: skip
    elif method in FAMILY:
        if codes is None:
            codes, metrics = ds.codes(FAMILY[method], scale, seed)
        elif len(codes) != ds.data.num_items:
            raise ValueError(
                f"codes has {len(codes)} rows but {ds.name} has {ds.data.num_items} items "
                "(one row of codes per item, in the dataset's item order)"
            )
        row.update(metrics or {})
        model_cfg.update(
            num_codebooks=codes.shape[1],
            codebook_size=int(codes.max()) + 1,
            fusion=fusion(method),
        )
        if method == "codes-text":  # text-MLP's item vector beside the code fields
            dense = ds.embeddings()
            model_cfg["dense_dim"] = dense.shape[1]
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # seeded initialisation; the global RNG untouched
        torch.manual_seed(seed)
        model = CTRModel.from_config(model_cfg)
    train, val, test = (_with_items(p, codes, dense, rows) for p in (sp.train, sp.val, sp.test))
    hist = fit_ctr(
        model,
        train,
        val,
        epochs=cfg.setting(cfg.epochs_by, method, scale, cfg.epochs),
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        patience=cfg.patience,
        min_epochs=cfg.min_epochs,
        seed=seed,
        device=cfg.device,
        progress=cfg.progress,
        desc=cell_label(row),
        embedding_l2=cfg.l2_for(method, scale),
        net_l2=cfg.net_l2,
    )
    probs = predict(model, test)
    if cfg.ranking_negatives:
        cand = ds.ranking_for(seed)
        scores = predict(model, _with_items(cand, codes, dense, rows))
        row.update(hit_ndcg_at_k(scores.reshape(-1, cfg.ranking_negatives + 1), 10))
    row["item_bytes"] = item_side_bytes(model, codes, dense)
    res = score_predictions(test.y.numpy(), probs)
    counts = ds.item_counts[test.extra["items"].numpy()]
    row.update(auc_by_item_count(test.y.numpy(), probs, counts))
    row.update(
        val_auc=hist["best_val_auc"],
        test_auc=res["auc"],
        test_logloss=res["logloss"],
        best_epoch=hist["best_epoch"],
        epochs=hist["epochs_run"],
        val_curve=[h["val_auc"] for h in hist["history"]],  # in memory only, not in the CSV
        seconds=round(time.perf_counter() - start, 2),
    )
    if cfg.save_predictions:
        path = Path(cfg.out) / "predictions" / spectrum_name(row)
        atomic_save_npy(path, probs.astype(np.float16))
    for rep, (ia, spectrum) in representation_abundance(model, codes, method).items():
        row[IA_COLUMNS[rep]] = ia
        atomic_save_npy(Path(cfg.out) / "spectra" / spectrum_name(row, rep), spectrum)
    return row, model


def item_side_bytes(model, codes: np.ndarray | None, dense: np.ndarray | None) -> int:
    """Bytes a deployed model keeps for items, the study's memory column: item-ID rows (every
    ME set), code tables and fusion weights, each item's codes (1 byte per code up to K = 256,
    2 up to 65,536, else 4), the stored text embeddings in fp16 and their MLP. User and
    attribute tables are left out: every method has the same ones."""
    total = 0
    sets = model.fields.sets if model.num_sets > 1 else [model.fields]
    for emb in sets:  # the item-ID field is field 1 (user_id, item_id, attributes...)
        total += emb.field_dims[1] * emb.embed_dim * 4
        if model.num_sets > 1 and model.num_codebooks:  # ME: the code fields, per set
            total += model.num_codebooks * emb.field_dims[-1] * emb.embed_dim * 4
    if model.codes is not None:
        total += sum(p.numel() * p.element_size() for p in model.codes.parameters())
    if codes is not None:
        k = int(codes.max()) + 1
        total += codes.size * (1 if k <= 256 else 2 if k <= 65_536 else 4)
    if dense is not None:
        total += dense.size * 2 + sum(p.numel() * 4 for p in model.dense.parameters())
    return int(total)


# Information abundance per representation -> results.csv column.
IA_COLUMNS = {
    "codes": "info_abundance",  # the code tables (RQ-VAE: without the collision table)
    "collision": "ia_collision",  # RQ-VAE's collision-code table, reported apart
    "fused": "ia_fused",  # each item's code representation as the backbone sees it
    "item_id": "ia_item_id",  # the item-ID table, for reference
}


@torch.no_grad()
def representation_abundance(model, codes: np.ndarray | None, method: str) -> dict:
    """IA and normalised spectrum of each representation the model has of items: the code
    tables (without RQ-VAE's collision table, which is reported apart), the fused item
    representation over all items (after MoC fusion; the concatenated levels for RQ-VAE) and
    the item-ID table. ME models are measured on their first embedding set."""
    out = {}
    fields = model.fields.sets[0] if model.num_sets > 1 else model.fields
    e = fields.embed_dim
    item_rows = fields.table.weight[fields.offsets[1] : fields.offsets[1] + fields.field_dims[1]]
    out["item_id"] = information_abundance(item_rows.detach().cpu().numpy())
    if codes is None:
        return out
    collision = method == "rqvae"
    levels = codes.shape[1] - int(collision)
    if model.codes is not None:  # MoC / RQ-VAE / k-means codes through MoCEmbedding
        tables = model.codes.tables.detach().cpu().float()
        dev = model.codes.tables.device
        fused = model.codes(torch.from_numpy(codes).to(dev)).float().cpu()  # (items, M, e)
    else:  # ME: the code fields are the last ordinary fields of the first set
        start = fields.offsets[-codes.shape[1]]
        k = fields.field_dims[-1]
        tables = fields.table.weight[start:].detach().cpu().float().reshape(codes.shape[1], k, e)
        offs = (torch.arange(codes.shape[1]) * k)[None]
        fused = fields.table.weight[start:][torch.from_numpy(codes) + offs].float()
    out["codes"] = information_abundance(tables[:levels].reshape(-1, e).numpy())
    if collision:
        out["collision"] = information_abundance(tables[levels:].reshape(-1, e).numpy())
    out["fused"] = information_abundance(fused[:, :levels].reshape(len(codes), -1).numpy())
    return out


def run_study(cfg: StudyConfig) -> list[dict[str, Any]]:
    """Run every unfinished cell of the grid, appending to `out/results.csv` after each."""
    out = Path(cfg.out)
    atomic_write_bytes(out / "config.json", json.dumps(asdict(cfg), indent=2).encode())
    path = out / "results.csv"
    rows = read_results(path)
    done = {cell_key(r) for r in rows}
    for spec in cfg.datasets:
        ds = StudyData(spec, cfg)
        # Seeds, then scales outermost: an interrupted study has every method compared at the
        # first seeds and smallest scales.
        for seed in cfg.seeds:
            for scale in sorted(cfg.scales):
                for method in cfg.methods:
                    if method not in SCALED and scale != min(cfg.scales):
                        continue  # unscaled methods run once, at the first scale, as 1x
                    if method in SCALED and scale not in cfg.scales_by.get(method, cfg.scales):
                        continue
                    if method == "popularity" and seed != cfg.seeds[0]:
                        continue  # deterministic: one row per dataset
                    s = scale if method in SCALED else 1
                    backbones = ["-"] if method == "popularity" else cfg.backbones
                    for backbone in backbones:
                        key = (ds.name, method, s, backbone, 0 if method == "popularity" else seed)
                        if key in done:
                            continue
                        row = run_cell(ds, method, s, backbone, key[-1])
                        log.info(
                            "cell %s: test AUC %.4f (%.0f s)", key, row["test_auc"], row["seconds"]
                        )
                        rows.append(row)
                        done.add(key)
                        write_results(path, rows)
    from moc_fast.report import write_report

    write_report(out)
    return rows
