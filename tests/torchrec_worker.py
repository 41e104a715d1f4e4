"""Run by tests/test_torchrec.py under `torchrun --nproc_per_node=2` (gloo, CPU): a CTRModel's
code tables as a TorchRec EmbeddingBagCollection, sharded by DistributedModelParallel, must
score every rank's batch exactly as the plain model does."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch


def main(out: str, sharding: str, kernel: str) -> None:
    import torch.distributed as dist
    from torchrec import KeyedJaggedTensor
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints

    from moc_fast.nn import CTRModel
    from moc_fast.nn.torchrec_adapter import TorchRecMoC

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same model on every rank, as after loading one checkpoint
    model = CTRModel([40, 300], embed_dim=8, num_codebooks=3, codebook_size=16, item_field=1,
                     fusion="gate", backbone="dcnv2", backbone_kwargs={"dropout": 0.0})  # fmt: skip
    model.item_codes.add_items(np.random.default_rng(0).integers(0, 16, (300, 3)))
    model.eval()
    adapter = TorchRecMoC.from_model(model)
    state = {k: v.clone() for k, v in adapter.state_dict().items()}
    sharders = [EmbeddingBagCollectionSharder()]
    # The tables are small, so the planner would replicate them: force the sharding under test.
    constraints = {key: ParameterConstraints(sharding_types=[sharding], compute_kernels=[kernel])
                   for key in adapter.keys}  # fmt: skip
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world, compute_device="cpu"), constraints=constraints
    )
    plan = planner.collective_plan(adapter, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(adapter, device=torch.device("cpu"), plan=plan,
                                   sharders=sharders)  # fmt: skip
    dmp.load_state_dict(state)  # every rank keeps only its shards of the tables
    dmp.eval()
    gen = torch.Generator().manual_seed(100 + rank)  # each rank scores its own batch
    x = torch.stack([torch.randint(0, 40, (97,), generator=gen),
                     torch.randint(0, 300, (97,), generator=gen)], 1)  # fmt: skip
    features = KeyedJaggedTensor.from_lengths_sync(
        keys=["item"], values=x[:, 1], lengths=torch.ones(97, dtype=torch.int64)
    )
    with torch.no_grad():
        sharded, plain = dmp(x, features), model(x)
    local = {k: type(v).__name__ for k, v in dmp.state_dict().items() if "moc_code" in k}
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump({"max_diff": float((sharded - plain).abs().max()), "n": len(sharded),
                   "plan": str(plan), "table_types": local}, f)  # fmt: skip
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
