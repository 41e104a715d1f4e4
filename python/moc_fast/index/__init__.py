"""Indexing stage: item embeddings -> semantic IDs (MoC, RQ-VAE, k-means, RQ-k-means)."""

from moc_fast._extras import require

require("torch", "safetensors", "tqdm", feature="moc_fast.index (indexers)")

from moc_fast.index.base import Indexer
from moc_fast.index.io import load_indexer
from moc_fast.index.kmeans import KMeansIndexer, RQKMeansIndexer
from moc_fast.index.moc import MoCIndexer
from moc_fast.index.quantizer import QuantizerOutput, VectorQuantizer
from moc_fast.index.rqvae import RQVAEIndexer

__all__ = [
    "Indexer",
    "KMeansIndexer",
    "MoCIndexer",
    "QuantizerOutput",
    "RQKMeansIndexer",
    "RQVAEIndexer",
    "VectorQuantizer",
    "load_indexer",
]
