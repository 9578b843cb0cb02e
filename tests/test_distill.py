"""Distillation builds a student that keeps what earlier stages did, pruning included."""
import pytest
import torch
import torch_pruning as tp
from torch import nn

from chaincomp.models import build_model
from chaincomp.stages.distill import StudentSpec, build_student, pruned_shares
from chaincomp.pruning import output_layers, sum_outputs


def _pruned(name: str, ratio: float, **kw) -> nn.Module:
    torch.manual_seed(0)
    m = build_model(name, **kw).eval()
    x = torch.rand(2, kw.get("in_channels", 3), 32, 32)
    tp.pruner.MetaPruner(m, x, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
                         ignored_layers=output_layers(m, x), output_transform=sum_outputs).step()
    return m


def _outs(m: nn.Module) -> dict[str, int]:
    return {n: l.weight.shape[0] for n, l in m.named_modules() if isinstance(l, (nn.Conv2d, nn.Linear))}


@pytest.mark.parametrize("name", ["resnet20", "vgg11"])
def test_student_of_a_pruned_teacher_keeps_the_pruning(name):
    kw = {"in_channels": 3, "num_classes": 10, "width": 0.5}
    teacher = _pruned(name, 0.5, **kw)
    shares = pruned_shares(teacher, build_model(name, **kw))
    assert shares and all(0.4 <= s <= 0.6 for s in shares.values())
    x = torch.rand(2, 3, 32, 32)
    student = build_student(teacher, StudentSpec(width=0.5), x)
    plain = _outs(build_model(name, **{**kw, "width": 0.25}))
    got = _outs(student)
    assert got.keys() == plain.keys()
    for n in shares:  # the student loses the teacher's share of channels, layer by layer
        assert got[n] == pytest.approx(plain[n] * shares[n], abs=1), n
    assert student(x).shape == (2, 10)


def test_student_of_an_unpruned_teacher_is_the_zoo_model():
    kw = {"in_channels": 3, "num_classes": 10, "width": 0.5}
    teacher = build_model("resnet20", **kw)
    assert pruned_shares(teacher, build_model("resnet20", **kw)) == {}
    student = build_student(teacher, StudentSpec(width=0.5), torch.rand(2, 3, 32, 32))
    assert _outs(student) == _outs(build_model("resnet20", **{**kw, "width": 0.25}))
