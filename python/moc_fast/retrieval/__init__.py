"""Generative next-item retrieval on the same semantic IDs the CTR models use.

`protocol` builds the leave-one-out splits (TIGER / P5 / IDGenRec), `metrics` ranks a held-out
target over the whole catalogue, `models` holds popularity, SASRec and the parallel decoder
for unordered codes (MoC), `tiger` the encoder-decoder with trie-constrained beam search,
`topk` the exact top-k over a code table, `train` the fit / evaluate loop and `run` the
configured study (`moc-fast retrieval`).
"""

from moc_fast.retrieval.metrics import metrics_from_ranks, ranks_from_lists, target_ranks
from moc_fast.retrieval.models import ParallelDecoder, Popularity, SASRec
from moc_fast.retrieval.protocol import RetrievalSplits, build_splits
from moc_fast.retrieval.tiger import TIGER, IDTrie
from moc_fast.retrieval.topk import code_scores, topk_by_codes
from moc_fast.retrieval.train import evaluate, fit

__all__ = [
    "IDTrie", "ParallelDecoder", "Popularity", "RetrievalSplits", "SASRec", "TIGER",
    "build_splits", "code_scores", "evaluate", "fit", "metrics_from_ranks", "ranks_from_lists",
    "target_ranks", "topk_by_codes",
]  # fmt: skip
