"""The traced training step (pyrovae.inference.tracedstep) against the fast step it replays.

A graph recorded with ``make_fx`` runs the same ATen operations on the same parameters and the
same random draws as the fast step, so every case asserts the same losses and gradients, bit for
bit, as the fast step — which tests/test_faststep.py holds to Pyro's own ELBO classes — and that
the graph really took the steps (the pair's Python not called). Then what a graph cannot see:
Python that depends on tensor values, arguments that change, state a callback changes, parameters
replaced in Pyro's store; and the torch.fx behaviour the step relies on.
"""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch.fx.experimental.proxy_tensor import make_fx

import pyrovae
from pyrovae import MeanField_ELBO
from pyrovae.errors import InputError
from pyrovae.inference import tracedstep
from pyrovae.inference.faststep import FastStep
from pyrovae.inference.tracedstep import TracedStep, traced_mode
from pyrovae.inference.train import Trainer
from test_faststep import (ELBOS, PAIRS, X, Net, assert_same, auto_diagonal_pair, auto_normal_pair, gaussian_obs, steps,
                           vae_pair)

D = X.shape[1]


def traced_steps(pair, Elbo, n=4, particles=1, x=X):
    """:func:`steps` through a TracedStep: step 0 the Pyro ELBO's, 1 the fast step's check, 2 the
    recording and its check against the fast step, 3… the graph. (results, the TracedStep)."""
    made = []
    out, _ = steps(pair, Elbo, fast=True, n=n, x=x, particles=particles,
                   wrap=lambda fast: made.append(TracedStep(fast)) or made[-1])
    return out, made[0]


def counting(pair):
    """The pair with a count of the model's calls (its Python, not its graph)."""
    calls = []

    def make():
        model, guide = pair()

        def counted(*args, **kwargs):
            calls.append(1)
            return model(*args, **kwargs)
        return counted, guide
    return make, calls


@pytest.mark.parametrize("particles", [1, 3])
@pytest.mark.parametrize("elbo", ELBOS)
@pytest.mark.parametrize("pair", PAIRS)
def test_traced_step_is_the_fast_step_to_the_bit(pair, elbo, particles):
    make, calls = counting(PAIRS[pair])
    traced, step = traced_steps(make, ELBOS[elbo][0], particles=particles)
    assert step.tracing and len(step.graphs) == 1, step.why_not
    # the model's Python ran at steps 0 (Pyro ELBO), 1 (check: Pyro + fast), 2 (record + check), not after
    assert len(calls) == 5 and len(traced) == 4
    assert_same(traced, steps(PAIRS[pair], ELBOS[elbo][0], fast=True, n=4, particles=particles)[0])


def data_dependent_pair():
    model, guide = vae_pair(obs=gaussian_obs)

    def branching(x):
        if x.sum() > 0:  # Python on a tensor's value: a graph would fix the branch
            model(x)
        else:
            model(x + 1)
    return branching, guide


def test_python_on_tensor_values_keeps_the_fast_step():
    """Recording fails, with a warning for a pair traced on request ("auto" says nothing)."""
    with pytest.warns(UserWarning, match="traced training step is not used for this pair: its step cannot be "
                                         r"recorded \(Python that depends on tensor values"):
        traced, step = traced_steps(data_dependent_pair, Trace_ELBO, n=4)
    assert not step.tracing and step.state == "on"
    assert_same(traced, steps(data_dependent_pair, Trace_ELBO, fast=True, n=4)[0])


def traced_calls(step, model, guide, calls):
    """Each (args, kwargs) of ``calls`` through ``step``, with validation off as in the trainer."""
    with pyro.validation_enabled(False):
        return [step.loss_and_grads(model, guide, *args, **kwargs) for args, kwargs in calls]


def kwarg_pair():
    """A pair with a number among its arguments (a weight on the likelihood)."""
    model, guide = vae_pair(obs=gaussian_obs)

    def weighted(x, weight=1.0):
        with poutine.scale(scale=weight):
            model(x)

    def guide_(x, weight=1.0):
        guide(x)
    return weighted, guide_


def fresh(pair):
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide = pair()
    step = TracedStep(FastStep(Trace_ELBO()))
    traced_calls(step, model, guide, [((X,), {})] * 2)  # the first call checks the fast step; the second records
    return model, guide, step


def test_each_argument_shape_and_number_gets_its_own_graph_and_the_same_numbers():
    model, guide, step = fresh(kwarg_pair)
    calls = [((X[:5],), {"weight": 0.5}), ((X,), {"weight": 0.5}), ((X,), {}), ((X[:5],), {"weight": 0.5})]
    torch.manual_seed(3)
    got = traced_calls(step, model, guide, calls)
    assert step.tracing and len(step.graphs) == 3  # (5 rows, 0.5), (12, 0.5), (12, default)
    torch.manual_seed(3)
    want = traced_calls(step.fast, model, guide, calls)
    assert got == want


def test_a_tensor_weight_that_changes_at_every_step_is_an_input_of_one_graph():
    model, guide, step = fresh(kwarg_pair)
    before = step.recorded
    calls = [((X,), {"weight": torch.tensor(1.0 + i / 10)}) for i in range(6)]
    torch.manual_seed(5)
    got = traced_calls(step, model, guide, calls)
    assert step.tracing and step.recorded == before + 1
    torch.manual_seed(5)
    assert got == traced_calls(step.fast, model, guide, calls)


def test_arguments_that_change_at_every_step_stop_tracing():
    model, guide, step = fresh(kwarg_pair)
    calls = [((X,), {"weight": 1.0 + i / 100}) for i in range(tracedstep.MAX_GRAPHS + 2)]
    with pytest.warns(UserWarning, match="not used for this pair: its arguments change too often"):
        losses = traced_calls(step, model, guide, calls)
    assert not step.tracing and "change too often" in step.why_not and all(map(torch.isfinite, torch.tensor(losses)))


def test_an_argument_a_key_cannot_hold_is_not_traced():
    model, guide = vae_pair(obs=gaussian_obs)

    def listed(xs):
        model(xs[0])

    def guide_(xs):
        guide(xs[0])
    step = TracedStep(FastStep(Trace_ELBO()))
    with pytest.warns(UserWarning, match="an argument is neither a tensor nor a number"):
        traced_calls(step, listed, guide_, [(([X],), {})] * 3)
    assert not step.tracing and "neither a tensor nor" in step.why_not and step.state == "on"


def test_a_parameter_replaced_in_the_store_drops_the_graphs():
    model, guide, step = fresh(lambda: vae_pair(obs=gaussian_obs))
    assert len(step.graphs) == 1
    store = pyro.get_param_store()
    name = next(n for n, _ in store.named_parameters())
    old = store.get_param(name)
    store.__delitem__(name)
    pyro.param(name, old.detach().clone() + 0.5)  # pyro.module puts the store's tensor back in the module
    torch.manual_seed(4)
    got = traced_calls(step, model, guide, [((X,), {})] * 2)
    assert step.tracing and step.recorded == 2
    torch.manual_seed(4)
    assert got == traced_calls(step.fast, model, guide, [((X,), {})] * 2)


class Annealed(torch.nn.Module):
    """A pair whose KL weight is an attribute a callback changes at each epoch's end (not an argument)."""
    traceable = True

    def __init__(self):
        super().__init__()
        self.dec, self.enc = Net(2, D), Net(D, 2)
        self.beta = 1.0

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 0.5).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=self.beta):
            pyro.sample("z", dist.Normal(self.enc(x), 1.0).to_event(1))


def train_runs(make, traced, epochs=3, elbo="mean-field", on_epoch=None, batch=5, x=X, precision="float32",
               beta=lambda epoch: 1.0):
    """Epochs of pyrovae's Trainer from one seed (β of each epoch from ``beta``): (history, parameters, trainer)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    owner = make()
    trainer = Trainer(owner.model, owner.guide, x, batch_size=batch, lr=1e-2, elbo=elbo, num_particles=1,
                      test_data=None, device="cpu", traced_step=traced, precision=precision)
    history = []
    for e in range(1, epochs + 1):
        trainer.set_beta(beta(e))
        history.append(trainer.run_epoch(e))
        if on_epoch:
            on_epoch(owner, e)
    return history, {k: p.detach().clone() for k, p in trainer.params.items()}, trainer


def small_vae():
    return pyrovae.VAE((D,), 2, hidden=(8,))


def test_state_a_callback_changes_between_epochs_is_caught_by_the_epochs_recheck():
    def anneal(owner, epoch):
        owner.beta = 0.5 / epoch
    x = torch.rand(200, D, generator=torch.Generator().manual_seed(1))  # 40 steps an epoch
    h_traced, p_traced, trainer = train_runs(Annealed, "on", epochs=4, on_epoch=anneal, x=x)
    h_plain, p_plain, _ = train_runs(Annealed, "off", epochs=4, on_epoch=anneal, x=x)
    assert h_traced == h_plain and all(torch.equal(p_traced[k], p_plain[k]) for k in p_plain)
    assert trainer.elbo.tracing and trainer.elbo.recorded == 4, trainer.elbo.why_not  # again after each change


@pytest.mark.parametrize("elbo", ["trace", "mean-field"])
def test_the_trainer_traces_pyrovaes_models_by_default_with_the_same_numbers(elbo):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h_auto, p_auto, trainer = train_runs(small_vae, "auto", elbo=elbo)
    h_off, p_off, plain = train_runs(small_vae, "off", elbo=elbo)
    assert isinstance(trainer.elbo, TracedStep) and isinstance(plain.elbo, FastStep)
    assert trainer.elbo.tracing and len(trainer.elbo.graphs) == 2  # batches of 5 and the last of 2
    assert h_auto == h_off and all(torch.equal(p_auto[k], p_off[k]) for k in p_off)


def test_auto_leaves_users_pairs_to_the_fast_step_and_on_traces_them():
    assert not isinstance(train_runs(Plain, "auto", epochs=1)[2].elbo, TracedStep)
    assert train_runs(Plain, "on", epochs=2)[2].elbo.tracing


class Plain(Annealed):
    traceable = False


class Branching(Annealed):
    """A model declaring itself traceable whose Python looks at a tensor's value."""

    def model(self, x):
        super().model(x if x.sum() > 0 else -x)


def test_auto_falls_back_quietly_where_a_step_cannot_be_recorded():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer = train_runs(Branching, "auto", epochs=2)[2]
    assert not trainer.elbo.tracing and "cannot be recorded" in trainer.elbo.why_not and trainer.elbo.state == "on"


@pytest.mark.parametrize("value, mode", [("auto", "auto"), ("on", "on"), ("off", "off"), (True, "on"), (False, "off")])
def test_traced_step_values(value, mode):
    assert traced_mode(value) == mode


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_bad_traced_step_names_the_argument(value):
    with pytest.raises(InputError, match=r"traced_step must be one of 'auto', 'on', 'off'; got"):
        Trainer(vae_pair()[0], vae_pair()[1], X, batch_size=4, elbo="trace", num_particles=1, test_data=None,
                device="cpu", traced_step=value)


def test_make_fx_records_what_the_traced_step_relies_on():
    """Conformance with torch.fx's make_fx, as :func:`tracedstep.record` uses it: parameters and
    buffers referenced (not copied), in-place updates replayed and the global random generator's
    draws in the eager order even where nothing reads their results, what nothing reads dropped,
    and Python on a tensor's value refused."""
    weight, buffer = torch.nn.Parameter(torch.randn(3)), torch.zeros(3)

    def step(x):
        buffer.add_(1)
        torch.rand(2)  # a draw nothing reads: it still moves the generator
        torch.arange(5)  # nothing reads it: dropped
        return (x * weight + torch.randn(3)).sum()
    graph = tracedstep.record(step, torch.ones(3))
    assert "arange" not in graph.code and "add_" in graph.code
    torch.manual_seed(0)
    eager = step(torch.ones(3))
    torch.manual_seed(0)
    replayed = graph(torch.ones(3))
    assert torch.equal(eager, replayed) and torch.equal(buffer, torch.full((3,), 3.0))
    assert torch.equal(torch.autograd.grad(replayed, weight)[0], torch.autograd.grad(eager, weight)[0])
    with torch.no_grad():
        weight.add_(1.0)  # Adam's in-place update: the graph sees it
    torch.manual_seed(0)
    replayed = graph(torch.ones(3))
    torch.manual_seed(0)
    assert torch.equal(replayed, step(torch.ones(3)))
    with pytest.raises(RuntimeError, match="data-dependent"):
        make_fx(lambda x: x * 2 if x.sum() > 0 else x)(torch.ones(3))


@pytest.mark.parametrize("elbo", ELBOS)
@pytest.mark.parametrize("pair", [auto_normal_pair, auto_diagonal_pair])
def test_autoguides_constrained_parameters_are_traced_to_the_bit(pair, elbo):
    """Pyro's autoguides: PyroModule parameters, a softplus-constrained scale (the graph recomputes
    the constrained value from the unconstrained parameter at every step), an auxiliary site."""
    make, calls = counting(pair)
    traced, step = traced_steps(make, ELBOS[elbo][0])
    assert step.tracing and len(step.graphs) == 1 and len(calls) == 5, step.why_not
    assert_same(traced, steps(pair, ELBOS[elbo][0], fast=True, n=4)[0])


def test_bf16_networks_are_traced_with_the_same_numbers():
    """precision="bf16": the networks under torch.autocast; the graph holds the casts autocast made."""
    h_on, _, on = train_runs(small_vae, "on", precision="bf16")
    assert on.elbo.tracing and on.elbo.graphs and h_on == train_runs(small_vae, "off", precision="bf16")[0]


@pytest.mark.parametrize("family", ["conditional", "two-layer", "vamp"])
def test_pyrovaes_other_models_are_traced_with_the_same_numbers(family):
    """model(x, y) (two graph inputs), two stochastic layers, the VampPrior (the encoder inside the prior)."""
    y = torch.nn.functional.one_hot(torch.arange(len(X)) % 3, 3).float()
    make = {"conditional": lambda: pyrovae.ConditionalVAE((D,), 2, 3, hidden=(8,)),
            "two-layer": lambda: pyrovae.TwoLayerVAE((D,), (3, 2), hidden=((8,), (6,))),
            "vamp": lambda: pyrovae.VAE((D,), 2, hidden=(8,), prior="vamp", prior_options={"components": 4})}[family]
    data = (X, y) if family == "conditional" else X
    h_auto, _, auto = train_runs(make, "auto", x=data)
    assert auto.elbo.tracing and len(auto.elbo.graphs) == 2, auto.elbo.why_not
    assert h_auto == train_runs(make, "off", x=data)[0]


def test_a_kl_warm_up_records_a_graph_per_beta_with_the_same_numbers():
    """β rises each epoch (ScaleLatents wraps the pair anew for each β): a new key, a new graph."""
    x = torch.rand(100, D, generator=torch.Generator().manual_seed(3)).bernoulli()
    options = dict(epochs=4, elbo="trace", batch=10, x=x, beta=lambda epoch: min(1.0, epoch / 3))
    h_auto, _, auto = train_runs(small_vae, "auto", **options)
    assert auto.elbo.tracing and auto.elbo.recorded == 3, auto.elbo.why_not  # β = 1/3, 2/3, 1
    assert h_auto == train_runs(small_vae, "off", **options)[0]
