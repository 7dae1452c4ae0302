"""The second MIL net (issue 13): SA-MIL-style self-attention on DWS-MIL's deepest features. It starts as
DWS-MIL (zero value projection), trains as teacher and student, and comes back from its checkpoint as
itself."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from napari_milkd.core.engine.config import TrainConfig
from napari_milkd.core.engine.datasets import BagSet
from napari_milkd.core.engine.models import DWSMILNet, SAMILNet, build_model
from napari_milkd.core.engine.models.sa_mil import KV_SIDE, SelfAttention2d
from napari_milkd.core.engine.presets import schedule
from napari_milkd.core.engine.train import distill_student, load_model, train_teacher
from napari_milkd.core.errors import InputError
from napari_milkd.core.progress import drain

CFG = TrainConfig(
    backbone="tiny", net="sa_mil", size=32, batch_size=4, teacher_epochs=2, student_epochs=2,
    switch_every=1, switch_from=1, device="cpu", lr=3e-3,
)  # fmt: skip


def test_sa_mil_starts_as_dws_mil_and_attends_once_its_values_move() -> None:
    torch.manual_seed(0)
    dws = build_model("tiny", "random")
    sa = build_model("tiny", "random", net="sa_mil")
    assert isinstance(sa, SAMILNet) and type(dws) is DWSMILNet
    missing = sa.load_state_dict(dws.state_dict(), strict=False).missing_keys
    assert missing and all(key.startswith("attention.") for key in missing)
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        same = sa(x).fused_prob
        assert torch.allclose(same, dws(x).fused_prob, atol=1e-6)  # zero values: the identity
        torch.nn.init.normal_(sa.attention.value.weight, std=0.1)
        assert not torch.allclose(sa(x).fused_prob, same, atol=1e-4)


def test_keys_are_pooled_so_memory_is_bounded() -> None:
    block = SelfAttention2d(8)
    seen: list[torch.Size] = []
    block.key.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    out = block(torch.rand(1, 8, 96, 80))
    assert out.shape == (1, 8, 96, 80)
    assert seen[0][-2:] == (KV_SIDE, KV_SIDE)  # 1 024 keys, not 7 680
    out.sum().backward()
    assert block.gamma.grad is not None


def test_the_attention_leaves_the_identity_within_a_few_steps() -> None:
    """The old γ = 0 start never switched on at the quick schedule; a zero value projection does."""
    torch.manual_seed(0)
    block = SelfAttention2d(8)
    x = torch.rand(2, 8, 12, 12)
    target = x + x.mean(dim=(2, 3), keepdim=True)  # needs what other positions hold
    optimiser = torch.optim.Adam(block.parameters(), lr=3e-4)
    first = torch.nn.functional.mse_loss(block(x), target).item()
    for _ in range(20):
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(block(x), target)
        loss.backward()
        optimiser.step()
    assert block.value.weight.abs().max() > 1e-3
    assert loss.item() < 0.9 * first


def test_sa_mil_trains_teacher_and_student_and_loads_back(square_bags: BagSet, tmp_path: Path) -> None:
    train, val = square_bags.split(0.25, seed=0)
    teacher = drain(train_teacher(train, val, CFG, tmp_path / "teacher.pt"))
    student = drain(distill_student(train, val, CFG, tmp_path / "teacher.pt", tmp_path / "student.pt"))
    assert teacher.epochs == 2 and student.epochs == 2
    model, config = load_model(tmp_path / "student.pt", device="cpu")
    assert isinstance(model, SAMILNet) and config.net == "sa_mil"
    teacher_model, _ = load_model(tmp_path / "teacher.pt", device="cpu")
    assert isinstance(teacher_model, SAMILNet)


def test_an_unknown_net_is_refused_and_old_configs_are_dws_mil() -> None:
    with pytest.raises(InputError, match="unknown MIL net"):
        build_model("tiny", "random", net="cam")
    old = TrainConfig().to_dict()
    del old["net"]  # a checkpoint made before the field existed
    assert TrainConfig.from_dict(old).net == "dws_mil"
    assert schedule("quick", net="sa_mil").net == "sa_mil" and schedule("quick").net == "dws_mil"
    assert replace(CFG, net="dws_mil").net == "dws_mil"
