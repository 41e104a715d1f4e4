"""Next-item models that score the whole catalogue: popularity, SASRec over item IDs, and the
parallel decoder over unordered semantic codes (MoC, k-means: any indexer whose M codes are
parallel).

Each model maps a history `(B, L)` of item indices (left-padded with PAD = -1) to scores
`(B, N)` over all N items (`scores`), and has a training `loss(history, target)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moc_fast.nn.item_codes import code_dtype
from moc_fast.nn.moc_embedding import MoCEmbedding
from moc_fast.retrieval.protocol import MAX_HISTORY
from moc_fast.retrieval.topk import code_scores, topk_by_codes


class Popularity(nn.Module):
    """Scores every item by its training-target count, whatever the history."""

    def __init__(self, counts: Tensor) -> None:
        super().__init__()
        self.register_buffer("counts", counts.float())

    def scores(self, history: Tensor) -> Tensor:
        return self.counts.expand(history.shape[0], -1)


class CausalEncoder(nn.Module):
    """A SASRec-style stack: learned positions, pre-norm causal self-attention blocks; returns
    the state at the last position (the history's summary)."""

    def __init__(self, dim: int, layers: int, heads: int, dropout: float, max_len: int) -> None:
        super().__init__()
        self.pos = nn.Embedding(max_len, dim)
        block = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, batch_first=True,
                                           norm_first=True, activation="gelu")  # fmt: skip
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        causal = torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), 1)
        self.register_buffer("causal", causal)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        """`x (B, L, dim)` item inputs, `pad (B, L)` True at padding -> `(B, dim)`."""
        length = x.shape[1]
        x = self.drop(x + self.pos.weight[None, -length:])
        x = x.masked_fill(pad[..., None], 0.0)
        # Left padding: the last position is always a real item (or the whole row is padding,
        # whose output is ignored); padded keys are masked through the causal mask's union.
        mask = self.causal[:length, :length][None] | pad[:, None, :]
        mask = mask & ~torch.eye(length, dtype=torch.bool, device=x.device)[None]  # never empty
        heads = self.blocks.layers[0].self_attn.num_heads
        h = self.blocks(x, mask=mask.repeat_interleave(heads, 0))
        return self.norm(h[:, -1])


class SASRec(nn.Module):
    """SASRec (Kang & McAuley 2018) over item IDs, trained with full softmax cross-entropy;
    the output layer is the input item table (shared)."""

    def __init__(self, num_items: int, dim: int = 64, layers: int = 2, heads: int = 1,
                 dropout: float = 0.3, max_len: int = MAX_HISTORY) -> None:  # fmt: skip
        super().__init__()
        self.num_items = num_items
        self.items = nn.Embedding(num_items + 1, dim)  # the last row: padding
        nn.init.normal_(self.items.weight, std=dim**-0.5)
        self.encoder = CausalEncoder(dim, layers, heads, dropout, max_len)

    def _state(self, history: Tensor) -> Tensor:
        pad = history < 0
        x = self.items(history.masked_fill(pad, self.num_items))
        return self.encoder(x, pad)

    def scores(self, history: Tensor) -> Tensor:
        return self._state(history) @ self.items.weight[: self.num_items].T

    def loss(self, history: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(self.scores(history), target)


class ParallelDecoder(nn.Module):
    """A causal transformer over the history whose M heads predict the next item's M codes at
    once (RPG's parallel decoding, for codes without order).

    Each history item enters as its code embeddings fused by `MoCEmbedding` (summed over the M
    fused fields), plus an item-ID embedding with `id_embedding`. An item's score is the sum
    of its codes' log-probabilities; top-k over the catalogue is exact (`topk_by_codes`).
    Items never seen in training still get inputs and scores through their codes.

    `loss`: `codes` trains each head by its own cross-entropy (RPG's multi-token loss: the
    heads learn the marginals of the next item's codes); `items` is one softmax over the whole
    catalogue of those same item scores (the per-head normalisers are constant per row and
    cancel), so training optimises the ranking the model is judged on, at the cost of a
    (B, N) logit matrix per batch (`_item_logits`). Scores and top-k are the same function of
    the heads either way."""

    LOSSES = ("codes", "items")

    def __init__(self, codes: Tensor, codebook_size: int, dim: int = 64, layers: int = 2,
                 heads: int = 1, dropout: float = 0.3, fusion: str = "gate",
                 id_embedding: bool = False, max_len: int = MAX_HISTORY,
                 loss: str = "codes") -> None:  # fmt: skip
        super().__init__()
        if codes.dim() != 2 or codes.min() < 0 or codes.max() >= codebook_size:
            raise ValueError(f"codes must be (N, M) in [0, {codebook_size}), got "
                             f"{tuple(codes.shape)} in [{codes.min()}, {codes.max()}]")  # fmt: skip
        if loss not in self.LOSSES:
            raise ValueError(f"loss must be one of {self.LOSSES}, got {loss!r}")
        self.loss_kind = loss
        self.num_items, self.num_codebooks = codes.shape
        self.codebook_size = codebook_size
        pad_row = torch.zeros(1, self.num_codebooks, dtype=torch.long)
        # The smallest dtype that holds the codes (uint8 at K <= 256: 7 MB for 1M items x 7
        # codes, not 56 as int64), read by the engine's top-k as is; last row: padding.
        table = torch.cat([codes.long(), pad_row]).to(code_dtype(codebook_size - 1))
        self.register_buffer("codes", table)
        self.embed = MoCEmbedding(self.num_codebooks, codebook_size, dim, fusion=fusion)
        # MoCEmbedding's CTR default (std 0.01) would leave the items invisible next to the
        # learned positions: start the summed code embeddings at SASRec's item scale instead.
        nn.init.normal_(self.embed.tables, std=dim**-0.5 / self.num_codebooks**0.5)
        self.ids = nn.Embedding(self.num_items + 1, dim) if id_embedding else None
        if self.ids is not None:
            nn.init.normal_(self.ids.weight, std=0.02)
        self.encoder = CausalEncoder(dim, layers, heads, dropout, max_len)
        self.heads = nn.Linear(dim, self.num_codebooks * codebook_size)

    def _state(self, history: Tensor) -> Tensor:
        pad = history < 0
        item = history.masked_fill(pad, self.num_items)
        x = self.embed(self.codes[item].long()).sum(-2)
        if self.ids is not None:
            x = x + self.ids(item)
        return self.encoder(x, pad)

    def _item_logits(self, state: Tensor) -> Tensor:
        """`(B, N)`: each item's summed code logits, `state · Σ_m W_m[c_m] + Σ_m b_m[c_m]`,
        the item scores up to a per-row constant (the heads' normalisers). Built as one GEMM
        against the (N, dim) sums of the items' head rows: the same numbers as gathering from
        the (B, M, K) logits, without a (B, N) gather-sum and its scatter in the backward."""
        m, k = self.num_codebooks, self.codebook_size
        offsets = torch.arange(m, device=state.device) * k
        flat = self.codes[: self.num_items].long() + offsets  # (N, M) rows of the stacked heads
        weight = F.embedding(flat, self.heads.weight).sum(1)  # (N, dim)
        bias = self.heads.bias[flat].sum(1)  # (N,)
        return torch.addmm(bias, state, weight.T)

    def log_probs(self, history: Tensor) -> Tensor:
        """`(B, M, K)` log-probabilities of the next item's codes."""
        logits = self.heads(self._state(history))
        return logits.view(-1, self.num_codebooks, self.codebook_size).log_softmax(-1)

    def scores(self, history: Tensor) -> Tensor:
        return code_scores(self.log_probs(history), self.codes[: self.num_items])

    def topk(self, history: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The k best items `(B, k)` and their scores, exact over the catalogue (the Rust
        engine on CPU, chunked torch elsewhere); ties go to the lower item index."""
        logp = self.log_probs(history)
        if logp.device.type != "cpu":
            return topk_by_codes(logp, self.codes[: self.num_items], k)
        from moc_fast.engine import topk_codes

        codes = self.codes[: self.num_items].numpy()  # a view: uint8 at K <= 256
        items, scores = topk_codes(logp.detach().float().numpy(), codes, k)
        return torch.from_numpy(items), torch.from_numpy(scores)

    def loss(self, history: Tensor, target: Tensor) -> Tensor:
        if self.loss_kind == "items":
            return F.cross_entropy(self._item_logits(self._state(history)), target)
        logp = self.log_probs(history)  # (B, M, K)
        want = self.codes[target].long()  # (B, M)
        return -logp.gather(2, want[..., None]).squeeze(-1).sum(1).mean()
