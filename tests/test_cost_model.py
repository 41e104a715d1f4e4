"""The cost model behind docs/gpu.md and `backend="auto"`: its byte and FLOP counts against
hand-computed ones, and the choices it makes."""

from __future__ import annotations

import pytest
import torch

from moc_fast.kernels.cost_model import (
    GPUS,
    VARIANTS,
    choose_backend,
    floor_seconds,
    kernels,
    model,
)


def test_fused_gate_bytes_and_flops_match_a_hand_count():
    b, m, e, r = 1000, 2, 4, 3
    x, h, c = b * m * e * 4, b * r * 4, b * m * 8  # (B, M·e) fp32, (B, r) fp32, int64 codes
    part = 2 * 2 * 132 * 64 * 64 * 4  # split partials of each weight-gradient GEMM
    ks = {k.name: k for k in kernels("fused", b, m, e, r, "gate")}
    assert ks["_down"].bytes == c + h  # gathers from L2, h written
    assert ks["_up"].bytes == c + h + x  # h read once (column tiles adjacent), out written
    assert ks["_bwd_gate"].bytes == c + h + x + x  # dout read, du written; dE_direct: atomics
    assert ks["_bwd_dh"].bytes == x + 2 * h
    assert ks["_bwd_de"].bytes == h + c and ks["_bwd_de"].atomics == b * m * e
    assert ks["_wgrad_up"].bytes == h + x + part
    assert sum(k.flops for k in ks.values()) == 7 * 2 * b * m * e * r  # u recomputed: 7 GEMMs
    v1 = {k.name: k for k in kernels("fused-v1", b, m, e, r, "gate")}
    assert v1["_up"].bytes == c + h * 1 + x  # one column tile here: nothing re-read
    big = {k.name: k for k in kernels("fused-v1", 65_536, 7, 64, 224, "gate")}
    assert big["_up"].bytes == 65_536 * (7 * 8 + 224 * 4 * 7 + 7 * 64 * 4)  # h read 7 times


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_is_at_least_the_floor(variant):
    for gpu in GPUS.values():
        for prec in ("ieee", "tf32"):
            t = model(variant, gpu, 65_536, 7, 64, 224, "gate", prec)["seconds"]
            assert t >= floor_seconds(gpu, 65_536, 7, 64, 224, prec)[0]


def test_auto_follows_the_model(monkeypatch):
    cuda = torch.device("cuda", 0)
    h100 = GPUS["H100"]
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    assert choose_backend(cuda, torch.float32, 7, 64, 224, "gate", 65_536, True, h100) == "triton"
    # bf16: cuBLAS runs bf16 tensor cores at twice the TF32 rate on half the bytes, while
    # the kernels upcast to TF32 dots; the model picks Triton on the H100 only
    assert choose_backend(cuda, torch.bfloat16, 7, 64, 224, "gate", 65_536, True, h100) == "triton"
    for card in ("A100", "H200"):
        assert choose_backend(cuda, torch.bfloat16, 7, 64, 224, "gate", 65_536, True,
                              GPUS[card]) == "torch"  # fmt: skip
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "highest")
    # IEEE: Triton's FMA dots lose to cuBLAS SGEMM, so torch (compiled or eager)
    assert choose_backend(cuda, torch.float32, 7, 64, 224, "gate", 65_536, True, h100) == "torch"
    assert choose_backend(cuda, torch.float32, 7, 64, 224, "gate", 65_536, False, h100) == "torch"
    # outside the kernels' range: torch whatever the model says
    assert choose_backend(cuda, torch.float32, 17, 64, 224, "gate", 65_536, True, h100) == "torch"
