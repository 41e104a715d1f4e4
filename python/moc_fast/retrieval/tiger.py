"""TIGER (Rajput et al., NeurIPS 2023): an encoder-decoder transformer that reads the history
as semantic-ID tokens (RQ-VAE codes plus the collision suffix) and generates the next item's
ID token by token, by beam search constrained to the IDs of real items (`IDTrie`), so it can
never return an item that does not exist.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moc_fast.retrieval.protocol import MAX_HISTORY


class IDTrie:
    """The prefix trie of the items' semantic IDs `(N, L)`: which token may follow a prefix,
    and which item a full ID names. IDs must be unique (append the collision suffix)."""

    def __init__(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 2 or len(ids) == 0:
            raise ValueError(f"ids must be a non-empty (N, L) array, got shape {ids.shape}")
        self.levels = ids.shape[1]
        self.item = {tuple(row): n for n, row in enumerate(ids.tolist())}
        if len(self.item) != len(ids):
            raise ValueError("semantic IDs must be unique: append the collision code")
        self.next: list[dict[tuple[int, ...], np.ndarray]] = []
        for level in range(self.levels):
            prefixes: dict[tuple[int, ...], set[int]] = {}
            for row in ids[:, : level + 1].tolist():
                prefixes.setdefault(tuple(row[:level]), set()).add(row[level])
            self.next.append({p: np.array(sorted(v)) for p, v in prefixes.items()})

    def allowed(self, prefix: tuple[int, ...]) -> np.ndarray:
        """Tokens (codes of level len(prefix)) that continue `prefix` to some real item."""
        return self.next[len(prefix)].get(prefix, np.zeros(0, np.int64))


class TIGER(nn.Module):
    """Encoder-decoder over semantic-ID tokens. Level l's codes are their own vocabulary
    (offset by the earlier levels' sizes); the encoder reads the history's L tokens per item
    (and an optional user token), the decoder emits L tokens from a start token."""

    def __init__(self, ids: Tensor, vocab: list[int], dim: int = 64, layers: int = 2,
                 heads: int = 2, dropout: float = 0.2, user_buckets: int = 0,
                 max_len: int = MAX_HISTORY) -> None:  # fmt: skip
        super().__init__()
        self.levels = ids.shape[1]
        if len(vocab) != self.levels:
            raise ValueError(f"vocab must give one size per level ({self.levels}), got {vocab}")
        self.num_items = ids.shape[0]
        self.vocab = list(vocab)
        offsets = np.r_[0, np.cumsum(vocab)[:-1]]
        self.register_buffer("offsets", torch.as_tensor(offsets, dtype=torch.long))
        self.register_buffer("ids", ids.long())
        total = int(sum(vocab))
        self.pad, self.bos = total, total + 1
        self.user_buckets = user_buckets
        self.tokens = nn.Embedding(total + 2 + user_buckets, dim)
        self.pos = nn.Embedding(max_len * self.levels + 1, dim)
        self.level_pos = nn.Embedding(self.levels + 1, dim)
        with warnings.catch_warnings():  # "enable_nested_tensor ... norm_first": expected
            warnings.filterwarnings("ignore", message="enable_nested_tensor")
            self.model = nn.Transformer(dim, heads, layers, layers, 4 * dim, dropout,
                                        batch_first=True, norm_first=True)  # fmt: skip
        self.out = nn.Linear(dim, total)
        self.trie = IDTrie(ids.cpu().numpy())

    def _encode(self, history: Tensor, user: Tensor | None) -> tuple[Tensor, Tensor]:
        pad = history < 0
        tok = self.ids[history.clamp(min=0)] + self.offsets  # (B, L, levels)
        tok = tok.masked_fill(pad[..., None], self.pad).flatten(1)
        key_pad = pad.repeat_interleave(self.levels, 1)
        if self.user_buckets and user is not None:
            u = (user % self.user_buckets + self.bos + 1)[:, None]
            tok, key_pad = torch.cat([u, tok], 1), torch.cat([key_pad[:, :1] & False, key_pad], 1)
        x = self.tokens(tok) + self.pos.weight[None, : tok.shape[1]]
        key_pad = key_pad.clone()
        key_pad[:, -1] = False  # the last history item is always real
        memory = self.model.encoder(x, src_key_padding_mask=key_pad)
        return memory, key_pad

    def _decode(self, memory: Tensor, key_pad: Tensor, prefix: Tensor) -> Tensor:
        """Logits `(B, total)` for the token after `prefix (B, l)` (level tokens, offset)."""
        b = prefix.shape[0]
        tok = torch.cat([torch.full((b, 1), self.bos, device=prefix.device), prefix], 1)
        y = self.tokens(tok) + self.level_pos.weight[None, : tok.shape[1]]
        causal = nn.Transformer.generate_square_subsequent_mask(tok.shape[1], device=y.device)
        h = self.model.decoder(y, memory, tgt_mask=causal, memory_key_padding_mask=key_pad)
        return self.out(h)

    def loss(self, history: Tensor, target: Tensor, user: Tensor | None = None) -> Tensor:
        memory, key_pad = self._encode(history, user)
        want = self.ids[target] + self.offsets  # (B, levels)
        logits = self._decode(memory, key_pad, want[:, :-1])  # (B, levels, total)
        loss = logits.new_zeros(())
        for level in range(self.levels):  # each level's softmax over its own codes
            lo, hi = int(self.offsets[level]), int(self.offsets[level]) + self.vocab[level]
            loss = loss + F.cross_entropy(logits[:, level, lo:hi], want[:, level] - lo)
        return loss

    @torch.no_grad()
    def recommend(self, history: Tensor, k: int, beam: int | None = None,
                  user: Tensor | None = None) -> tuple[Tensor, int]:  # fmt: skip
        """Top-k items `(B, k)` by constrained beam search (`beam` ≥ k beams, default k), -1
        where fewer than k exist, and the count of returned IDs that name no item (always 0:
        the trie allows only real prefixes)."""
        beam = max(k, beam or k)
        memory, key_pad = self._encode(history, user)
        b = history.shape[0]
        dev = history.device
        seqs = torch.zeros((b, 1, 0), dtype=torch.long, device=dev)  # codes so far per beam
        score = torch.zeros((b, 1), device=dev)
        for level in range(self.levels):
            nb = seqs.shape[1]
            prefix = (seqs + self.offsets[:level]).reshape(b * nb, level)
            mem = memory.repeat_interleave(nb, 0)
            kp = key_pad.repeat_interleave(nb, 0)
            lo = int(self.offsets[level])
            logits = self._decode(mem, kp, prefix)[:, -1, lo : lo + self.vocab[level]]
            logp = logits.log_softmax(-1).view(b, nb, -1)
            mask = np.full(tuple(logp.shape), -np.inf, np.float32)
            alive = (score > float("-inf")).tolist()
            for i, rows in enumerate(seqs.tolist()):
                for j, row in enumerate(rows):
                    if alive[i][j]:
                        mask[i, j, self.trie.allowed(tuple(row))] = 0.0
            cand = (score[..., None] + logp + torch.from_numpy(mask).to(dev)).view(b, -1)
            top = cand.topk(min(beam, cand.shape[1]), dim=1)
            parent, code = top.indices // self.vocab[level], top.indices % self.vocab[level]
            seqs = torch.cat([seqs.gather(1, parent[..., None].expand(-1, -1, level)),
                              code[..., None]], 2)  # fmt: skip
            score = top.values
        items = torch.full((b, k), -1, dtype=torch.long)
        invalid = 0
        for i, (rows, s) in enumerate(zip(seqs.tolist(), score.tolist(), strict=True)):
            found = []
            for row, v in zip(rows, s, strict=True):
                if v == float("-inf"):
                    continue  # fewer real continuations than beams
                item = self.trie.item.get(tuple(row))
                if item is None:
                    invalid += 1
                elif len(found) < k:
                    found.append(item)
            items[i, : len(found)] = torch.tensor(found, dtype=torch.long)
        return items, invalid
