"""The method vocabulary shared by every `moc-fast` verb and the study (no torch needed).

A method is how items enter the CTR model: not at all (`popularity`), as ids (`id-only`, `me`),
as a dense text embedding (`text-mlp`), as semantic codes from an indexer family, or as both
text and MoC codes (`codes-text`: text-MLP's item vector plus MoC-residual's code fields), or
as MoC codes instead of the item ID (`codes-only`: MoC-residual with no item-ID table, what
a production system that replaces its item table with semantic IDs deploys), or as a
hashed item ID (`hashed-id`: the hashing trick, scale s = a table of ⌈N/s⌉ rows shared by
colliding items, the usual way to shrink an item table without semantics).
"""

from __future__ import annotations

METHODS = (
    "popularity",
    "id-only",
    "text-mlp",
    "me",
    "rqvae",
    "moc-none",
    "moc-gate",
    "moc-residual",
    "kmeans",
    "rq-kmeans",
    "codes-text",
    "codes-only",
    "hashed-id",
)
ALIASES = {"moc": "moc-gate"}
# Methods whose representation grows with the scale s (s sets, levels or codebooks).
# (`hashed-id`'s scale is how many times smaller its table is than the item count.)
SCALED = ("me", "rqvae", "moc-none", "moc-gate", "moc-residual", "rq-kmeans", "codes-text",
          "codes-only", "hashed-id")  # fmt: skip
# Methods that read semantic codes, and the indexer family that makes them.
FAMILY = {
    "rqvae": "rqvae",
    "moc-none": "moc",
    "moc-gate": "moc",
    "moc-residual": "moc",
    "kmeans": "kmeans",
    "rq-kmeans": "rq-kmeans",
    "codes-text": "moc",
    "codes-only": "moc",
}


def canonical(method: str) -> str:
    """The method's canonical name (`moc` is `moc-gate`), or ValueError naming the vocabulary."""
    name = ALIASES.get(method, method)
    if name not in METHODS:
        raise ValueError(
            f"unknown method {method!r}: expected one of {list(METHODS)} (or 'moc' = 'moc-gate')"
        )
    return name


def fusion(method: str) -> str:
    """The MoCEmbedding fusion a code method uses (`none` for RQ-VAE and k-means codes)."""
    if method in ("codes-text", "codes-only"):
        return "residual"
    return method.removeprefix("moc-") if FAMILY.get(method) == "moc" else "none"
