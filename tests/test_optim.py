"""Optimizer settings: learning-rate schedules (torch's schedulers as the reference, Burda's stages),
Adam's β/ε, gradient clipping, and their place in checkpoints (a resumed run continues the schedule)."""
import dataclasses
import math

import pyro
import pytest
import torch

from pyrovae.app import config as cfgmod
from pyrovae.errors import CheckpointError, ConfigError, InputError
from pyrovae.inference.optim import SCHEDULES, OptimizerSettings
from pyrovae.inference.train import Trainer, train
from test_train import linear_gaussian_pair


def torch_lrs(make_scheduler, epochs, lr=0.1):
    """The learning rate of epochs 1..epochs under a torch.optim.lr_scheduler, stepped once per epoch."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler, lrs = make_scheduler(opt), []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("name, options, reference", [
    ("step", {"step_size": 3, "gamma": 0.5}, lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5)),
    ("exponential", {"gamma": 0.9}, lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9)),
    ("constant", {}, lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor=1.0)),
    # eta_min = final · lr; past total_epochs torch's closed form turns back up, ours stays at the floor
    ("cosine", {"total_epochs": 20, "final": 0.01},
     lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20, eta_min=0.1 * 0.01)),
])
def test_schedules_match_torchs_schedulers(name, options, reference):
    settings = OptimizerSettings(lr=0.1, lr_schedule=name, lr_schedule_options=options)
    ours = [settings.lr_at(e) for e in range(1, 21)]
    assert ours == pytest.approx(torch_lrs(reference, 20), rel=1e-12)


def test_burda_schedule_is_the_papers():
    """8 stages of 3^i epochs (1, 3, 9, ..., 2187: 3,280 in all) at 1e-3 · 10^(−i/7)."""
    s = OptimizerSettings(lr=1e-3, lr_schedule="burda")
    ends = [sum(3 ** j for j in range(i + 1)) for i in range(8)]
    assert ends[-1] == 3280
    for i, end in enumerate(ends):
        first = 1 if i == 0 else ends[i - 1] + 1
        for epoch in (first, end):
            assert s.lr_at(epoch) == pytest.approx(1e-3 * 10 ** (-i / 7), rel=1e-12), (i, epoch)
    assert s.lr_at(3281) == s.lr_at(10_000) == pytest.approx(1e-4)
    # shrunk to 328 epochs: stages end at 0.1, 0.4, 1.3, 4, 12.1, 36.4, 109.3, 328; an epoch takes the
    # stage in which it starts (stage 1, 0.1–0.4, holds no epoch start and is passed over)
    short = OptimizerSettings(lr=1e-3, lr_schedule="burda", lr_schedule_options={"total_epochs": 328})
    epochs, stages = (1, 2, 3, 4, 5, 13, 14, 37, 38, 110, 111, 328), (0, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7)
    assert [short.lr_at(e) for e in epochs] == pytest.approx([1e-3 * 10 ** (-i / 7) for i in stages], rel=1e-12)


def test_cosine_ends_at_its_floor_and_stays_there():
    s = OptimizerSettings(lr=1e-3, lr_schedule="cosine", lr_schedule_options={"total_epochs": 10, "final": 0.1})
    assert s.lr_at(1) == pytest.approx(1e-3)
    assert s.lr_at(6) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert s.lr_at(11) == s.lr_at(500) == pytest.approx(1e-4)
    with pytest.raises(InputError, match="lr_schedule_options.final must be a non-negative number, got -0.5"):
        OptimizerSettings(lr_schedule="cosine", lr_schedule_options={"final": -0.5})


def test_bad_optimizer_settings_name_the_argument():
    with pytest.raises(InputError, match=r"adam_beta2 must be in \[0, 1\), got 1.0"):
        OptimizerSettings(adam_beta2=1.0)
    with pytest.raises(InputError, match="clip_norm must be >= 0, got -1"):
        OptimizerSettings(clip_norm=-1)
    with pytest.raises(InputError, match="lr_schedule_options.gamma must be a positive number, got 0"):
        OptimizerSettings(lr_schedule="step", lr_schedule_options={"gamma": 0})
    with pytest.raises(InputError, match="lr_schedule_options.decay is not an option of lr_schedule 'step', which "
                                         "takes step_size, gamma; got decay = 0.5"):
        OptimizerSettings(lr_schedule="step", lr_schedule_options={"decay": 0.5})
    with pytest.raises(InputError, match="lr_schedule must be one of 'burda', 'constant', 'cosine', 'exponential', "
                                         "'step'; got 'linear'"):
        OptimizerSettings(lr_schedule="linear")


def test_config_keys_are_checked_on_load():
    cfg = cfgmod.load(overrides=["train.lr_schedule=burda", "train.clip_norm=5.0", "train.adam_eps=1e-4"])
    assert cfg["train"]["lr_schedule"] == "burda" and cfg["train"]["adam_eps"] == 1e-4
    for override, message in [("train.adam_beta1=1.0", r"train.adam_beta1 must be in \[0, 1\), got 1.0"),
                              ("train.lr_schedule=linear", "train.lr_schedule must be one of 'burda'"),
                              ("train.clip_norm=-2.0", "train.clip_norm must be >= 0"),
                              ("train.gradient=fancy", "train.gradient must be one of 'standard', 'stl', 'dreg'"),
                              ("train.lr_schedule_options={decay=1}", "train.lr_schedule_options.decay is not an "
                               "option of lr_schedule 'constant', which takes none; got decay = 1")]:
        with pytest.raises(ConfigError, match=message):
            cfgmod.load(overrides=[override])


def test_clip_norm_bounds_every_steps_gradient():
    """What reaches Adam's step has total norm ≤ clip_norm (seen from an optimizer step pre-hook)."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide = linear_gaussian_pair(3, 1)
    x = 5 + torch.randn(200, 3)  # far from the init: large gradients
    norms = {}
    for clip in (0.0, 0.5):
        pyro.clear_param_store()
        trainer = Trainer(model, guide, x, batch_size=50, elbo="trace", num_particles=1, test_data=None, device="cpu",
                          optim=OptimizerSettings(lr=1e-3, clip_norm=clip))
        seen = []
        trainer.optimizer.register_step_pre_hook(lambda opt, *_: seen.append(math.sqrt(sum(
            float(p.grad.pow(2).sum()) for g in opt.param_groups for p in g["params"] if p.grad is not None))))
        trainer.run_epoch(1)
        norms[clip] = seen
    assert min(norms[0.0]) > 10  # 0: unclipped, large
    assert max(norms[0.5]) == pytest.approx(0.5, rel=1e-5)  # clipped to exactly 0.5


def test_resume_continues_the_schedule_exactly(tmp_path):
    """4 epochs in one go and 2 + 2 resumed from the checkpoint: the same learning rates and parameters."""
    x = torch.randn(120, 3)
    optimizer = OptimizerSettings(lr_schedule="step", lr_schedule_options={"step_size": 1, "gamma": 0.5},
                                  adam_beta1=0.8, adam_beta2=0.99, adam_eps=1e-6, clip_norm=10.0)
    options = dict(epochs=4, batch_size=40, lr=0.05, optimizer=optimizer, progress=False, seed=1)

    def run(epochs_first, path):
        pyro.clear_param_store()
        model, guide = linear_gaussian_pair(3, 1)
        history = train(model, guide, x, **{**options, "epochs": epochs_first}, checkpoint=path)
        if epochs_first < 4:
            pyro.clear_param_store()
            model, guide = linear_gaussian_pair(3, 1)
            history = train(model, guide, x, **options, checkpoint=path, resume=True)
        return history, {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    whole, params_whole = run(4, tmp_path / "a.pt")
    resumed, params_resumed = run(2, tmp_path / "b.pt")
    assert [r["lr"] for r in whole] == [r["lr"] for r in resumed] == pytest.approx([0.05, 0.025, 0.0125, 0.00625])
    for name in params_whole:
        assert torch.equal(params_whole[name], params_resumed[name]), name
    pyro.clear_param_store()
    model, guide = linear_gaussian_pair(3, 1)
    with pytest.raises(CheckpointError, match=r"other optimizer settings \(lr_schedule_options: .*'gamma': 0.5"):
        other = dataclasses.replace(optimizer, lr_schedule_options={"step_size": 1, "gamma": 0.1})
        train(model, guide, x, **{**options, "epochs": 5, "optimizer": other}, checkpoint=tmp_path / "b.pt", resume=True)


def test_a_new_schedule_is_one_class_and_one_line():
    from pyrovae.inference.optim import Schedule

    @SCHEDULES.register("halving-test")
    class Halving(Schedule):
        def factor(self, epoch):
            return 0.5 ** (epoch - 1)
    try:
        assert OptimizerSettings(lr=1.0, lr_schedule="halving-test").lr_at(3) == 0.25
    finally:
        SCHEDULES.unregister("halving-test")


def test_set_one_option_of_a_table():
    """--set train.lr_schedule_options.total_epochs=E changes that option and keeps the file's others."""
    cfg = cfgmod.load("examples/configs/mnist-burda.toml", overrides=["train.epochs=300",
                                                                      "train.lr_schedule_options.total_epochs=300"])
    assert cfg["train"]["lr_schedule_options"] == {"stages": 8, "growth": 3.0, "total_epochs": 300}
    with pytest.raises(ConfigError, match=r"train.epochs must be an integer, got {.x.: 1}"):
        cfgmod.load(overrides=["train.epochs.x=1"])
