"""The TorchRec adapter, in its own environment (`bash scripts/setup_torchrec.sh`; CI runs it
with MOC_FAST_REQUIRE_TORCHREC=1, where a missing torchrec fails instead of skipping)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

if os.environ.get("MOC_FAST_REQUIRE_TORCHREC") != "1":
    pytest.importorskip("torchrec", reason="TorchRec lives in its own environment: "
                        "bash scripts/setup_torchrec.sh")  # fmt: skip

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_model():
    from moc_fast.nn import CTRModel

    torch.manual_seed(0)
    model = CTRModel([40, 300], embed_dim=8, num_codebooks=3, codebook_size=16, item_field=1,
                     fusion="residual", backbone_kwargs={"dropout": 0.0})  # fmt: skip
    model.item_codes.add_items(np.random.default_rng(0).integers(0, 16, (300, 3)))
    return model.eval()


def item_features(items: torch.Tensor):
    from torchrec import KeyedJaggedTensor

    ones = torch.ones(len(items), dtype=torch.int64)
    return KeyedJaggedTensor.from_lengths_sync(keys=["item"], values=items, lengths=ones)


def test_the_adapter_scores_like_the_plain_model_and_names_bad_features():
    from moc_fast.nn.torchrec_adapter import TorchRecMoC

    model = small_model()
    adapter = TorchRecMoC.from_model(model).eval()
    x = torch.stack([torch.randint(0, 40, (33,)), torch.randint(0, 300, (33,))], 1)
    with torch.no_grad():
        assert torch.equal(adapter(x, item_features(x[:, 1])), model(x))
    from torchrec import KeyedJaggedTensor

    two_each = KeyedJaggedTensor.from_lengths_sync(
        keys=["item"], values=x[:, 1].repeat(2), lengths=torch.full((33,), 2)
    )
    with pytest.raises(ValueError, match="exactly one item id per sample"):
        adapter(x, two_each)
    with pytest.raises(ValueError, match="item 300 has no codes"):
        adapter(x, item_features(torch.full((33,), 300)))


@pytest.mark.parametrize(("sharding", "kernel"), [("table_wise", "fused"),
                                                  ("data_parallel", "dense")])  # fmt: skip
def test_distributed_model_parallel_on_two_ranks_scores_like_the_plain_model(
    tmp_path, sharding, kernel
):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", str(HERE / "torchrec_worker.py"),
           str(tmp_path / "r"), sharding, kernel]  # fmt: skip
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for rank in (0, 1):
        out = json.loads((tmp_path / f"r.rank{rank}.json").read_text())
        assert out["n"] == 97 and out["max_diff"] == 0.0  # the same logits, bit for bit
        sharded = set(out["table_types"].values())
        assert sharded == ({"ShardedTensor"} if sharding == "table_wise" else {"Tensor"})
