import math

import numpy as np
import pytest
import torch

from mimlab.pretrain.optim import TeacherEMA, clip_per_parameter, param_groups, set_lr_wd
from mimlab.pretrain.schedules import Schedules, cosine_schedule, scaled_lr, teacher_temp_schedule
from .helpers import micro_cfg


def test_cosine_schedule_warmup_then_cosine():
    s = cosine_schedule(1.0, 0.0, epochs=4, steps_per_epoch=5, warmup_epochs=1)
    assert len(s) == 20
    np.testing.assert_allclose(s[:5], np.linspace(0, 1, 5))
    assert s[5] == pytest.approx(1.0)
    # half-cosine over the remaining 15 steps: value at step 5+j = 0.5(1+cos(pi j/15))
    assert s[5 + 7] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 15)))
    assert s[-1] > 0 and s[-1] < 0.02 and np.all(np.diff(s[5:]) <= 0)


def test_teacher_temperature_and_lr_scaling():
    np.testing.assert_allclose(teacher_temp_schedule(0.04, 0.07, 3, 5), [0.04, 0.055, 0.07, 0.07, 0.07])
    assert scaled_lr(5e-4, 16, 16) == pytest.approx(5e-4)  # thesis: 16 x 16 = 256
    sch = Schedules.from_config(micro_cfg("optim.epochs=3"), steps_per_epoch=4, world_size=2)
    assert sch.at(1, 0)["lr"] == pytest.approx(0.005 * 8 / 256)  # end of the 1-epoch warm-up
    assert sch.at(0, 0)["wd"] == pytest.approx(0.04) and sch.at(0, 0)["momentum"] == pytest.approx(0.996)
    assert sch.at(2, 3)["momentum"] < 1.0 and sch.at(2, 3)["momentum"] > 0.999


def test_weight_decay_groups():
    lin = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    groups = param_groups(lin)
    assert [p.shape for p in groups[0]["params"]] == [torch.Size([4, 3])]
    assert len(groups[1]["params"]) == 3 and groups[1]["weight_decay"] == 0.0
    opt = torch.optim.AdamW(groups)
    set_lr_wd(opt, 0.1, 0.3)
    assert opt.param_groups[0]["weight_decay"] == 0.3 and opt.param_groups[1]["weight_decay"] == 0.0


def test_clip_is_per_parameter_not_global():
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(2))
    a.grad = torch.tensor([3.0, 4.0, 0.0])  # norm 5 -> clipped to 1
    b.grad = torch.tensor([0.3, 0.4])  # norm 0.5 -> untouched
    norms = clip_per_parameter([a, b], 1.0)
    torch.testing.assert_close(norms, torch.tensor([5.0, 0.5]))
    torch.testing.assert_close(a.grad, torch.tensor([0.6, 0.8, 0.0]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(b.grad, torch.tensor([0.3, 0.4]))


def test_ema_formula_over_shared_names():
    s = torch.nn.Linear(2, 2)
    t = torch.nn.Linear(2, 2)
    before = t.weight.detach().clone()
    ema = TeacherEMA([(s, t)])
    ema.update(0.9)
    torch.testing.assert_close(t.weight, 0.9 * before + 0.1 * s.weight.detach())
