"""The speed paths as ELBOs: FastStep and TracedStep with pyro.infer.SVI, minibatch scaling as a
property of the ELBO, a check that leaves the pair as it found it, and the trainer's callbacks."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO
from pyro.optim import Adam
from torch import nn

import pyrovae
from pyrovae import MeanField_ELBO
from pyrovae.errors import TrainingError
from pyrovae.inference.callbacks import Callback
from pyrovae.inference.elbos import Wrapper, scales_inside
from pyrovae.inference.faststep import FastStep
from pyrovae.inference.pathwise import DReG_IWAE
from pyrovae.inference.tracedstep import TracedStep, traces_pair

D = 6
X = torch.rand(40, D, generator=torch.Generator().manual_seed(0)).bernoulli()


def svi_losses(make_elbo, steps=5):
    """SVI's losses from one seed, a fresh pyrovae VAE each time."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = pyrovae.VAE((D,), 2, hidden=(8,))
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2}), make_elbo())
    with pyro.validation_enabled(False):
        return [svi.step(X) for _ in range(steps)]


@pytest.mark.parametrize("wrap", [lambda e: FastStep(e), lambda e: TracedStep(FastStep(e))])
def test_speed_path_elbos_in_pyros_svi_give_pyros_losses(wrap):
    """MeanField_ELBO's fast step (and its traced replay) in pyro.infer.SVI: the losses of
    MeanField_ELBO itself, bit for bit, over 5 steps (check, recording, replay included); Trace_ELBO's
    to float rounding (the fused Bernoulli sum)."""
    fast = svi_losses(lambda: wrap(MeanField_ELBO(max_plate_nesting=1)))
    assert fast == svi_losses(lambda: MeanField_ELBO(max_plate_nesting=1))
    fast = svi_losses(lambda: wrap(Trace_ELBO(max_plate_nesting=1)))
    assert fast == pytest.approx(svi_losses(lambda: Trace_ELBO(max_plate_nesting=1)), rel=1e-6)


def test_scaling_a_minibatch_is_a_property_of_the_elbo():
    assert scales_inside(Trace_ELBO()) and scales_inside(MeanField_ELBO())
    assert not scales_inside(RenyiELBO()) and not scales_inside(DReG_IWAE())
    assert scales_inside(FastStep(Trace_ELBO())) and scales_inside(TracedStep(FastStep(MeanField_ELBO())))
    assert not scales_inside(Wrapper(RenyiELBO(num_particles=3, vectorize_particles=True)))
    assert DReG_IWAE.scales_inside is False


class Normed(nn.Module):
    """A pair with BatchNorm1d and Dropout in both networks (ProdLDA's kind)."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(D, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Linear(8, 4))
        self.dec = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Linear(8, D))

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate("data", x.shape[0]):
            h = self.enc(x)
            pyro.sample("z", dist.Normal(h[:, :2], nn.functional.softplus(h[:, 2:]) + 1e-3).to_event(1))


def one_step(use_fast: bool):
    """One loss_and_grads from the same seeded state: (loss, buffers, modes, the random state after, grads)."""
    pyro.clear_param_store()
    torch.manual_seed(3)
    pair = Normed()
    base = MeanField_ELBO(max_plate_nesting=1)
    elbo = FastStep(base) if use_fast else base
    pyro.set_rng_seed(5)
    with pyro.validation_enabled(False):
        loss = elbo.loss_and_grads(pair.model, pair.guide, X)
    buffers = {k: v.clone() for k, v in pair.state_dict().items() if "running" in k or "num_batches" in k}
    grads = {k: p.grad.clone() for k, p in pyro.get_param_store().named_parameters()}
    return loss, buffers, [m.training for m in pair.modules()], torch.get_rng_state(), grads, elbo


def test_the_fast_steps_check_changes_buffers_modes_and_random_state_as_one_pyro_step():
    """The check runs MeanField_ELBO and the fast step on the same draws; BatchNorm's running
    statistics are updated once (not twice), Dropout draws once, modes are left as found."""
    loss, buffers, modes, rng, grads, elbo = one_step(use_fast=True)
    loss_ref, buffers_ref, modes_ref, rng_ref, grads_ref, _ = one_step(use_fast=False)
    assert elbo.state == "on" and loss == loss_ref
    assert buffers.keys() == buffers_ref.keys() and buffers
    assert all(torch.equal(buffers[k], buffers_ref[k]) for k in buffers)
    assert buffers["enc.1.num_batches_tracked"].item() == 1
    assert modes == modes_ref and all(modes) and torch.equal(rng, rng_ref)
    assert all(torch.equal(grads[k], grads_ref[k]) for k in grads_ref)


class Recorder(Callback):
    def __init__(self):
        self.seen = []

    def on_step(self, state):
        self.seen.append((state.epoch, state.lr, state.beta))


def small_train(**options):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = pyrovae.VAE((D,), 2, hidden=(8,))
    rec = Recorder()
    options.setdefault("progress", False)
    rows = pyrovae.train(vae.model, vae.guide, X, batch_size=20, seed=0, callbacks=[rec, *options.pop("also", [])],
                         **options)
    return rows, rec.seen


def test_warm_up_and_schedule_are_callbacks_setting_each_epochs_beta_and_rate():
    rows, seen = small_train(epochs=3, kl_warmup=2, lr=0.01, optimizer=pyrovae.OptimizerSettings(
        lr_schedule="step", lr_schedule_options={"step_size": 1, "gamma": 0.5}))
    assert [(e, lr, beta) for e, lr, beta in seen[::2]] == [(1, 0.01, 0.5), (2, 0.005, 1.0), (3, 0.0025, 1.0)]
    assert [r["lr"] for r in rows] == [0.01, 0.005, 0.0025]


def test_without_a_test_set_nothing_is_evaluated():
    rows, _ = small_train(epochs=1)
    assert all(math.isnan(rows[0][k]) for k in ("test_elbo", "reconstruction", "kl"))
    rows, _ = small_train(epochs=1, test_data=X[:10])
    assert rows[0]["test_elbo"] == pytest.approx(rows[0]["reconstruction"] - rows[0]["kl"], rel=1e-5)


class PoisonAfter(Callback):
    """After epoch ``epoch``'s checkpoint, a parameter becomes NaN (so the next step's loss is NaN)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, state):
        if state.epoch == self.epoch:
            with torch.no_grad():
                next(iter(state.params.values())).fill_(float("nan"))


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_checkpoint_and_divergence_stop_are_callbacks(tmp_path):
    """The checkpoint callback writes after every epoch; the divergence stop names the epoch and
    step and the checkpoint it kept (epoch 2's: epoch 3 is never written)."""
    path = tmp_path / "ck.pt"
    with pytest.raises(TrainingError, match=r"training diverged at epoch 3, step 1: .*the last good checkpoint "
                                            r"\(epoch 2\) is kept at"):
        small_train(epochs=4, checkpoint=path, also=[PoisonAfter(2)])
    assert torch.load(path, weights_only=True)["epoch"] == 2


def test_the_progress_bar_is_a_callback(capsys):
    small_train(epochs=2, progress=True)
    assert "4/4" in capsys.readouterr().err  # 2 steps an epoch


def test_traced_step_by_default_only_where_every_part_is_pyrovaes():
    own = pyrovae.VAE((D,), 2, hidden=(8,))
    assert traces_pair("auto", own)

    class MyDecoder(nn.Module):  # a user's component inside the built-in model
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(2, D)

        def forward(self, z):
            return self.net(z)
    mixed = pyrovae.VAE((D,), 2, hidden=(8,), decoder=MyDecoder())
    assert not traces_pair("auto", mixed) and traces_pair("on", mixed)
    MyDecoder.traceable = True  # it declares itself traceable
    assert traces_pair("auto", mixed)


def test_an_extra_term_gets_an_elbo_of_its_own():
    """A Term without its own elbo gets a new ELBO of the main one's kind, not the main one's instance
    (whose plate nesting and particle mode are the main pair's)."""
    from pyrovae.inference.elbos import innermost
    from pyrovae.inference.train import Trainer
    pyro.clear_param_store()
    vae, other = pyrovae.VAE((D,), 2, hidden=(8,)), pyrovae.VAE((D,), 2, hidden=(8,))
    trainer = Trainer(vae.model, vae.guide, X, batch_size=20, elbo="mean-field", num_particles=3, test_data=None,
                      device="cpu", extra=[pyrovae.Term(other.model, other.guide, X[:10])])
    term_elbo = trainer.extra[0].elbo
    assert isinstance(term_elbo, MeanField_ELBO) and term_elbo is not innermost(trainer.elbo)


def test_traced_step_in_svi_updates_batchnorm_statistics_as_pyros_elbo():
    """A pair with BatchNorm1d and Dropout through TracedStep(FastStep(MeanField_ELBO)) in SVI: the
    same losses and the same running statistics after 5 steps (check, recording, replays) as
    MeanField_ELBO itself — recording and checks update nothing beyond what each step does."""
    def run(make_elbo):
        pyro.clear_param_store()
        torch.manual_seed(3)
        pair = Normed()
        pyro.set_rng_seed(5)
        svi = SVI(pair.model, pair.guide, Adam({"lr": 1e-2}), make_elbo())
        with pyro.validation_enabled(False):
            losses = [svi.step(X) for _ in range(5)]
        return losses, {k: v.clone() for k, v in pair.state_dict().items() if "running" in k or "num_batches" in k}
    traced = []
    losses, buffers = run(lambda: traced.append(TracedStep(FastStep(MeanField_ELBO(max_plate_nesting=1)))) or traced[0])
    losses_ref, buffers_ref = run(lambda: MeanField_ELBO(max_plate_nesting=1))
    assert traced[0].tracing and traced[0].graphs, traced[0].why_not
    assert losses == losses_ref
    assert all(torch.equal(buffers[k], buffers_ref[k]) for k in buffers_ref)
    assert buffers["enc.1.num_batches_tracked"].item() == 5
