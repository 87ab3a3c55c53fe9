"""pyrovae.train: any model/guide pair, minibatch scaling, exact resume, atomic checkpoints, NaN guard."""
import os

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import pyrovae
from pyrovae.inference import checkpoint as ckpt
from pyrovae.lab.exact import ppca_log_evidence, ppca_mle
from pyrovae.inference.settings import StepSettings
from pyrovae.inference.train import ScaleLatents, TrainingError, train, warmup_beta


def linear_gaussian_pair(D, L):
    """A model/guide pair written by hand: z ~ N(0, I_L), x ~ N(Wz + b, σ²I); q(z|x) = N(Ax + c, diag s²)."""
    def model(x):
        W = pyro.param("W", 0.1 * torch.randn(D, L, generator=torch.Generator().manual_seed(0)))
        b = pyro.param("b", torch.zeros(D))
        sigma = pyro.param("sigma", torch.ones(()), constraint=dist.constraints.positive)
        with pyro.plate("obs", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, sigma).to_event(1), obs=x)

    def guide(x):
        A = pyro.param("A", torch.zeros(L, D))
        c = pyro.param("c", torch.zeros(L))
        s = pyro.param("s", torch.ones(L), constraint=dist.constraints.positive)
        with pyro.plate("obs", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ A.T + c, s).to_event(1))

    return model, guide


@pytest.mark.slow
def test_train_a_hand_written_pair_reaches_the_exact_likelihood():
    """PPCA by SVI: the trained ELBO per datapoint is within 0.05 nats below the closed-form maximum
    likelihood (Tipping & Bishop 1999) and not above it beyond 4 standard errors of its estimate."""
    x, truth = pyrovae.data.ppca_data(2000, latent_dim=2, obs_dim=5, sigma=0.5, seed=0)
    model, guide = linear_gaussian_pair(5, 2)
    history = train(model, guide, x, epochs=150, batch_size=500, lr=0.03, elbo="mean-field", seed=0, progress=False)
    mle = ppca_mle(x.double(), 2)
    best = ppca_log_evidence(x.double(), mle["W"], mle["b"], mle["sigma"]).mean().item()
    with torch.no_grad():
        elbo = pyrovae.log_weights(model, guide, x, num_particles=200, analytic=True).mean(0)   # [N]
    final, se = elbo.mean().item(), elbo.std().item() / len(elbo) ** 0.5
    assert history[-1]["train_elbo"] > history[0]["train_elbo"] + 1.0
    assert best - 0.05 < final <= best + 4 * se, (final, se, best)


def test_history_rows_and_minibatch_scaling():
    x = torch.randn(300, 3)
    model, guide = linear_gaussian_pair(3, 1)
    rows = train(model, guide, x, epochs=2, batch_size=64, test_data=x[:50], progress=False)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "train_elbo", "test_elbo", "reconstruction", "kl", "seconds", "lr",
                            "samples_per_second"}
    assert rows[0]["lr"] == rows[1]["lr"] == 1e-3  # the default: constant
    for r in rows:
        assert r["test_elbo"] == pytest.approx(r["reconstruction"] - r["kl"], rel=1e-5)
        # per datapoint: a 3-D standard-ish Gaussian scores a few nats, not hundreds (scale undone)
        assert -20 < r["train_elbo"] < 0


def small_vae_run(tmp_path, epochs, resume=False, callback=None):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(240, 6, 5, generator=g) > 0.5).float()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = pyrovae.VAE((6, 5), 2, hidden=(16,))
    history = train(vae.model, vae.guide, x, epochs=epochs, batch_size=50, test_data=x[:40], seed=None if resume else 1,
                    checkpoint=tmp_path / "checkpoint.pt", resume=resume, progress=False, callback=callback)
    return history, vae


def test_resume_continues_exactly(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight, vae_a = small_vae_run(tmp_path / "a", 4)
    small_vae_run(tmp_path / "b", 2)
    resumed, vae_b = small_vae_run(tmp_path / "b", 4, resume=True)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_second")} for r in h]
    assert strip(resumed) == strip(straight)
    for p, q in zip(vae_a.parameters(), vae_b.parameters()):
        assert torch.equal(p, q)


def test_checkpoint_holds_what_resuming_needs(tmp_path):
    history, _ = small_vae_run(tmp_path, 1)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and state["history"] == history
    assert {"params", "optimizer", "rng", "config"} <= set(state)
    assert "decoder$$$net.0.weight" in state["params"]


def test_a_crash_between_write_and_rename_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt.save(path, {"epoch": 1, "w": torch.ones(3)})

    def crash(src, dst):
        raise KeyboardInterrupt("killed between write and rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    state = ckpt.load(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary left behind


def test_truncated_and_foreign_checkpoints_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    ckpt.save(path, {"epoch": 1, "w": torch.ones(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="not a readable pyrovae checkpoint"):
        ckpt.load(path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": ckpt.FORMAT, "x": Evil()}, path)
    with pytest.raises(ckpt.CheckpointError, match="not a readable pyrovae checkpoint"):
        ckpt.load(path)
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(ckpt.CheckpointError, match="not a pyrovae checkpoint"):
        ckpt.load(path)
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint at"):
        ckpt.load(tmp_path / "missing.pt")


@pytest.mark.parametrize("poison_kind,what", [("nan-parameter", "a distribution parameter became NaN/Inf"),
                                               ("inf-loss", "the loss became inf")])
@pytest.mark.filterwarnings("ignore:Encountered NaN")  # Pyro's own warning, before our error
@pytest.mark.parametrize("validate", [False, True])
def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path, poison_kind, what, validate):
    poison = {"on": False}

    def model(x):
        loc = pyro.param("loc", torch.zeros(()))
        if poison["on"] and poison_kind == "nan-parameter":
            loc = loc * float("nan")
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)
        if poison["on"] and poison_kind == "inf-loss":
            pyro.factor("bad", torch.tensor(-float("inf")))

    def guide(x):
        pass

    def after_epoch(history):
        poison["on"] = len(history) == 1

    with pytest.raises(TrainingError, match=f"diverged at epoch 2, step 1: {what}"):
        train(model, guide, torch.randn(100), epochs=3, batch_size=10, checkpoint=tmp_path / "c.pt",
              progress=False, callback=after_epoch, step=StepSettings(validate=validate))
    assert ckpt.load(tmp_path / "c.pt")["epoch"] == 1
    # the bad step's gradients were not applied: the parameter in memory is still the last good one
    assert torch.isfinite(pyro.param("loc")) and pyro.param("loc").item() == pytest.approx(
        ckpt.load(tmp_path / "c.pt")["params"]["loc"].item(), abs=0.05)


def test_first_step_is_validated_so_a_pairs_mistake_is_named():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Bernoulli(0.5), obs=x)  # x is Gaussian: outside {0, 1}

    with pytest.raises(ValueError, match="support"):
        train(model, lambda x: None, torch.randn(20), epochs=1, batch_size=10, progress=False)


def test_bad_training_arguments():
    model, guide = linear_gaussian_pair(3, 1)
    x = torch.randn(10, 3)
    for kwargs, match in [({"epochs": 0}, "epochs"), ({"epochs": 1, "batch_size": 0}, "batch_size"),
                          ({"epochs": 1, "elbo": "renyi"}, "elbo must be one of 'enum', 'graph', 'iwae', 'mean-field', "
                                                           "'trace'; got 'renyi'"),
                          ({"epochs": 1, "lr": -1.0}, "lr"), ({"epochs": 1, "num_particles": 0}, "num_particles")]:
        with pytest.raises(ValueError, match=match):
            train(model, guide, x, progress=False, **kwargs)
    with pytest.raises(TypeError, match="data must be a torch.Tensor"):
        train(model, guide, [[1.0]], epochs=1, progress=False)


@pytest.mark.parametrize("elbo", ["trace", "mean-field", "iwae", "graph"])
def test_every_elbo_trains_a_vae(elbo):
    x = (torch.rand(200, 6, 5, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    vae = pyrovae.VAE((6, 5), 2, hidden=(16,))
    rows = train(vae.model, vae.guide, x, epochs=3, batch_size=50, elbo=elbo, num_particles=2, progress=False, seed=0)
    assert rows[-1]["train_elbo"] > rows[0]["train_elbo"]


def test_a_parameter_created_after_the_first_step_is_trained():
    calls = {"n": 0}

    def model(x):
        calls["n"] += 1
        loc = pyro.param("late_loc", torch.zeros(())) if calls["n"] > 3 else torch.zeros(())
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    train(model, lambda x: None, torch.randn(200) + 3.0, epochs=30, batch_size=50, lr=0.1, progress=False)
    assert pyro.param("late_loc").item() == pytest.approx(3.0, abs=0.3)


@pytest.mark.parametrize("elbo_cls", [pyro.infer.Trace_ELBO, pyro.infer.TraceMeanField_ELBO, pyrovae.MeanField_ELBO])
def test_kl_warmup_scales_the_kl_term_and_nothing_else(elbo_cls):
    """ScaleLatents(β) turns the ELBO into E_q[log p(x|z)] − β KL: with the same draws, the
    objective at β = 0.5 exceeds the ELBO by exactly KL/2 (KL in closed form, the notes' formula)."""
    x = (torch.rand(20, 6, generator=torch.Generator().manual_seed(0)) > 0.5).double()
    vae = pyrovae.VAE(6, 3, hidden=(8,)).double()
    elbo = elbo_cls()
    with torch.no_grad():
        pyro.set_rng_seed(1)
        full = -elbo.loss(vae.model, vae.guide, x)
        pyro.set_rng_seed(1)
        half = -elbo.loss(ScaleLatents(0.5)(vae.model), ScaleLatents(0.5)(vae.guide), x)
        mu, sigma = vae.posterior_params(x)
        kl = (0.5 * (mu ** 2 + sigma ** 2 - torch.log(sigma ** 2) - 1)).sum().item()
    if elbo_cls is pyro.infer.Trace_ELBO:  # Monte Carlo KL: log q(z) − log p(z) at the drawn z
        pyro.set_rng_seed(1)
        tr = poutine.trace(vae.guide).get_trace(x)
        z = tr.nodes["z"]["value"]
        kl = (tr.nodes["z"]["fn"].log_prob(z) - vae.prior().log_prob(z)).sum().item()
    assert half - full == pytest.approx(0.5 * kl, rel=1e-9)


def test_kl_warmup_in_training():
    assert [warmup_beta(e, 4) for e in (1, 2, 4, 9)] == [0.25, 0.5, 1.0, 1.0]
    assert warmup_beta(1, 0) == 1.0
    x = (torch.rand(200, 6, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    rows = {}
    for warmup in (0, 3):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)  # the same initial VAE in both runs
        vae = pyrovae.VAE(6, 2, hidden=(16,))
        rows[warmup] = train(vae.model, vae.guide, x, epochs=3, batch_size=50, kl_warmup=warmup, seed=0, progress=False)
    # the β < 1 objective of epoch 1 lies above the ELBO (KL ≥ 0 down-weighted); at β = 1 the objective is the ELBO
    assert rows[3][0]["train_elbo"] > rows[0][0]["train_elbo"]
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=r"^kl_warmup must be (>= 0|an integer), got"):
            train(vae.model, vae.guide, x, epochs=1, kl_warmup=bad, progress=False)


def test_fused_adam_takes_adams_steps():
    """The trainer's Adam (fused on CPU; β1, β2, ε settable) moves parameters as torch's reference Adam does."""
    from pyrovae.inference.optim import OptimizerSettings
    settings = OptimizerSettings(lr=0.01, adam_beta1=0.5, adam_beta2=0.9, adam_eps=1e-4)
    make_adam = lambda p, lr: settings.adam(p)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    start, grads = torch.randn(5, 3, generator=g), [torch.randn(5, 3, generator=g) for _ in range(4)]
    params = {}
    reference = lambda p, lr: torch.optim.Adam(p, lr=lr, betas=(0.5, 0.9), eps=1e-4)  # noqa: E731
    for name, opt_fn in (("fused", make_adam), ("reference", reference)):
        p = start.clone().requires_grad_()
        opt = opt_fn([p], 0.01)
        for grad in grads:
            p.grad = grad.clone()
            opt.step()
        params[name] = p.detach()
    assert make_adam([start.clone().requires_grad_()], 0.01).defaults["fused"] is True
    assert not torch.equal(params["fused"], start)
    torch.testing.assert_close(params["fused"], params["reference"], rtol=1e-6, atol=1e-7)


def test_trainer_reuses_its_scaled_pair():
    from pyrovae.inference.train import Trainer
    model, guide = linear_gaussian_pair(3, 1)
    trainer = Trainer(model, guide, torch.randn(300, 3), batch_size=64, lr=1e-3, elbo="trace", num_particles=1,
                      test_data=None, device="cpu")
    full, last = 64, 300 - 4 * 64  # the batch sizes of an epoch
    assert trainer._scaled_pair(full) is trainer._scaled_pair(64)
    assert trainer._scaled_pair(last) is not trainer._scaled_pair(full)
    trainer.set_beta(0.5)
    assert trainer._scaled_pair(full) is not trainer._pairs[(id(None), 64, 1.0, True)]
    assert len(trainer._pairs) == 3


def test_pyros_renyi_elbo_puts_a_minibatch_scale_inside_its_log_mean_exp():
    """Why the trainer scales the IWAE bound outside the ELBO: under poutine.scale(s) Pyro's
    RenyiELBO(alpha=0) is log 1/k Σ_j w_j^s, not s · log 1/k Σ_j w_j (about s · max_j log w_j)."""
    model, guide = linear_gaussian_pair(3, 1)
    x, s = torch.randn(40, 3), 600.0
    elbo = pyro.infer.RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    losses = {}
    for name, scale in (("unscaled", 1.0), ("scaled", s)):
        pyro.set_rng_seed(3)
        losses[name] = elbo.loss(poutine.scale(model, scale), poutine.scale(guide, scale), x)
    assert abs(losses["scaled"] - s * losses["unscaled"]) > 1.0  # nats: a different objective


@pytest.mark.parametrize("gradient", ["standard", "dreg"])
def test_iwae_minibatch_is_scaled_outside_the_bound(gradient):
    """A training step's IWAE loss and gradient are N/B × those of the minibatch's bound (same draws)."""
    from pyrovae.inference.elbos import make_elbo
    from pyrovae.inference.train import Trainer
    pyro.clear_param_store()
    model, guide = linear_gaussian_pair(3, 1)
    x = torch.randn(120, 3)
    trainer = Trainer(model, guide, x, batch_size=40, lr=1e-3, elbo="iwae", num_particles=5, test_data=None,
                      device="cpu", gradient=gradient)
    seen = {}
    trainer.optimizer.register_step_pre_hook(lambda opt, *_: seen.update(
        {name: p.grad.clone() for name, p in trainer.params.items()}))
    pyro.set_rng_seed(7)
    loss = trainer.step((x[:40],)) * len(x)  # step returns the loss per datapoint
    assert seen, "the optimizer took no step"
    pyro.clear_param_store()  # the same initial parameters again (the pair's init is deterministic)
    model, guide = linear_gaussian_pair(3, 1)
    reference = make_elbo("iwae", 5, 1, gradient=gradient)
    pyro.set_rng_seed(7)
    with pyro.validation_enabled(True):  # as the trainer's first step
        expected = reference.loss_and_grads(model, guide, x[:40])
    assert loss == pytest.approx(3 * expected, rel=1e-6)  # N/B = 3
    for name, p in pyro.get_param_store().named_parameters():
        torch.testing.assert_close(seen[name], 3 * p.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad, match", [(float("nan"), "x must be finite, got 1 NaN/Inf"),
                                        (2.0, r"x must lie in \[0, 1\] for the bernoulli likelihood")])
def test_a_vaes_data_are_checked_whole_before_the_first_step(bad, match):
    """Batches after the first are not checked one by one (Pyro's validation is off then): the
    trainer checks the whole training and test sets up front, a bad value in the last row included."""
    x = (torch.rand(300, 6, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    vae = pyrovae.VAE(6, 2, hidden=(8,))
    for data, test in ((x.clone(), None), (x, x.clone())):
        (test if test is not None else data)[-1, -1] = bad
        with pytest.raises(ValueError, match=match):
            train(vae.model, vae.guide, data, test_data=test, epochs=1, batch_size=50, progress=False)
