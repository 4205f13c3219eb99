"""Cosine schedules against closed-form values, and the EMA teacher update."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from mrifoundry.models.ssl.ema import update_teacher
from mrifoundry.models.ssl.schedules import build_schedules, cosine_schedule


def test_cosine_schedule_closed_form():
    base, final, total, warm, freeze, start = 1.0, 0.1, 20, 5, 3, 0.2
    s = cosine_schedule(base, final, total, warmup_iters=warm, start_warmup=start, freeze_iters=freeze)
    assert s.shape == (total,)
    assert (s[:freeze] == 0).all()
    # warm-up: linspace(start, base, warm), ends on base
    for i in range(warm):
        assert s[freeze + i] == pytest.approx(start + (base - start) * i / (warm - 1))
    n_cos = total - warm - freeze
    for i in (0, 3, n_cos - 1):
        expected = final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n_cos))
        assert s[freeze + warm + i] == pytest.approx(expected)
    assert cosine_schedule(2.0, 2.0, 4).tolist() == [2.0] * 4
    with pytest.raises(ValueError):
        cosine_schedule(1.0, 0.0, 5, warmup_iters=4, freeze_iters=2)


def test_build_schedules_values():
    total, ipe = 100, 10
    s = build_schedules(total, ipe, base_lr=1e-3, min_lr=1e-6, warmup_epochs=2, wd=(0.04, 0.4),
                        momentum=(0.992, 1.0), teacher_temp=(0.04, 0.07), teacher_temp_warmup_epochs=3,
                        freeze_last_layer_epochs=1)
    assert s.total_iters == total
    at0, at19, at20, at60 = s.at(0), s.at(19), s.at(20), s.at(60)
    assert at0["lr"] == 0.0 and at19["lr"] == pytest.approx(1e-3) and at20["lr"] == pytest.approx(1e-3)
    assert at60["lr"] == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6) * (1 + math.cos(math.pi * 40 / 80)))
    assert at0["wd"] == pytest.approx(0.04)
    assert at60["wd"] == pytest.approx(0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * 60 / 100)))
    assert at60["momentum"] == pytest.approx(1.0 + 0.5 * (0.992 - 1.0) * (1 + math.cos(math.pi * 60 / 100)))
    # teacher temperature: linear 0.04 -> 0.07 over 30 iterations, then constant
    assert at0["teacher_temp"] == pytest.approx(0.04)
    assert s.at(15)["teacher_temp"] == pytest.approx(0.04 + 0.03 * 15 / 29)
    assert s.at(29)["teacher_temp"] == pytest.approx(0.07) and at60["teacher_temp"] == pytest.approx(0.07)
    # last layer frozen for the first epoch, then the lr schedule
    assert (s.last_layer_lr[:10] == 0).all()
    np.testing.assert_array_equal(s.last_layer_lr[10:], s.lr[10:])
    # past the end: the final values
    assert s.at(total) == {"lr": 1e-6, "wd": 0.4, "momentum": 1.0, "teacher_temp": 0.07, "last_layer_lr": 1e-6}


def test_build_schedules_short_run_cuts_warmups():
    s = build_schedules(10, 4, base_lr=1.0, min_lr=0.0, warmup_epochs=0.5, teacher_temp_warmup_epochs=30,
                        freeze_last_layer_epochs=0)
    assert s.lr[:2].tolist() == [0.0, 1.0]
    # the temperature ramp (120 iterations) keeps its slope and is truncated
    assert len(s.teacher_temp) == 10 and s.teacher_temp[-1] == pytest.approx(0.04 + 0.03 * 9 / 119)


def _net():
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()


@pytest.mark.parametrize("m", [0.0, 0.3, 0.992, 1.0])
def test_update_teacher_formula(m):
    torch.manual_seed(0)
    student, teacher = _net(), _net()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    update_teacher(teacher, student, m)
    for k, v in teacher.state_dict().items():
        s = student.state_dict()[k]
        if m == 1.0:
            assert torch.equal(v, before[k])
        elif m == 0.0:
            assert torch.equal(v, s)
        else:
            torch.testing.assert_close(v, m * before[k] + (1 - m) * s, rtol=1e-12, atol=1e-12)


def test_update_teacher_unwraps_and_checks():
    student, teacher = _net(), _net()

    class Wrapper(nn.Module):  # stands in for torch.compile's wrapper (DDP needs a process group)
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    update_teacher(teacher, Wrapper(student), 0.0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters()))
    with pytest.raises(KeyError):
        update_teacher(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Linear(2, 2)).double(),
                       student, 0.5)
    with pytest.raises(ValueError):
        update_teacher(nn.Sequential(nn.Linear(3, 5)).double(), student, 0.5)
    with pytest.raises(ValueError):
        update_teacher(copy.deepcopy(student), student, 1.5)
