"""A synthetic catalogue (documented as synthetic): items with templated text drawn from
latent topics, users with topic preferences, interactions in sequence order. It is the
embedded default for the quickstart demo and the fast tests, not a benchmark."""

from __future__ import annotations

import numpy as np

from moc_fast.data.datasets import Interactions

_TOPICS = [
    ("lipstick", "matte", "rose"),
    ("shampoo", "herbal", "argan"),
    ("perfume", "floral", "musk"),
    ("sunscreen", "mineral", "spf"),
    ("mascara", "volumizing", "black"),
    ("lego", "city", "bricks"),
    ("puzzle", "jigsaw", "landscape"),
    ("doll", "fashion", "dress"),
    ("drone", "camera", "quad"),
    ("blocks", "wooden", "stacking"),
    ("stapler", "desk", "heavy"),
    ("notebook", "ruled", "spiral"),
    ("printer", "laser", "toner"),
    ("pen", "gel", "fine"),
    ("chair", "ergonomic", "mesh"),
    ("tent", "camping", "dome"),
    ("kettle", "electric", "steel"),
    ("blender", "smoothie", "glass"),
    ("headphones", "wireless", "noise"),
    ("keyboard", "mechanical", "rgb"),
]
_WORDS = ["deluxe", "mini", "pro", "classic", "travel", "value", "premium", "eco", "kids", "max"]
_BRANDS = ["acme", "zenith", "nova", "orbit", "lumen", "terra", "vivid", "apex"]


def synthetic_catalog(
    num_users: int = 1500,
    num_items: int = 1200,
    topics: int = 20,
    per_user: tuple[int, int] = (5, 15),
    seed: int = 0,
) -> Interactions:
    """Users prefer 1-3 topics; each history draws mostly from them (popularity-skewed)."""
    if not 1 <= topics <= len(_TOPICS):
        raise ValueError(f"topics must be in [1, {len(_TOPICS)}], got {topics}")
    rng = np.random.default_rng(seed)
    item_topic = rng.integers(0, topics, num_items)
    texts, brands, cats = [], [], []
    for t in item_topic:
        noun, adj, extra = _TOPICS[t]
        w = rng.choice(_WORDS, 2, replace=False)
        brand = _BRANDS[rng.integers(0, len(_BRANDS))]
        texts.append(f"{brand} {w[0]} {adj} {noun} {extra} {w[1]}")
        brands.append(brand)
        cats.append(f"topic {t // 5}, {noun}")
    popularity = rng.pareto(1.5, num_items) + 1
    by_topic = [np.flatnonzero(item_topic == t) for t in range(topics)]
    users, items, order = [], [], []
    for u in range(num_users):
        liked = rng.choice(topics, rng.integers(1, 4), replace=False)
        n = int(rng.integers(per_user[0], per_user[1] + 1))
        pool = np.concatenate([by_topic[t] for t in liked])
        pool = pool if len(pool) >= n else np.arange(num_items)
        p = popularity[pool] / popularity[pool].sum()
        chosen = rng.choice(pool, n, replace=False, p=p)
        users += [u] * n
        items += chosen.tolist()
        order += list(range(n))
    return Interactions(
        name="synthetic",
        user_ids=[f"user{u}" for u in range(num_users)],
        item_ids=[f"item{i}" for i in range(num_items)],
        users=np.array(users, dtype=np.int64),
        items=np.array(items, dtype=np.int64),
        order=np.array(order, dtype=np.int64),
        timestamps=None,
        item_fields={"title": texts, "brand": brands, "categories": cats},
    )
