"""Pairs of the kind Pyro's own examples publish, scored by pyrovae and by Pyro's ELBO classes.

Two pairs written here in the style of Pyro's examples (small sizes; no code of Pyro's copied):

* ProdLDA-like (the Pyro tutorial's topic model): an encoder with Dropout and BatchNorm1d, a
  decoder ``Dropout → Linear → BatchNorm1d(V) → softmax(dim=1)`` over a vocabulary of V words,
  a Multinomial likelihood over counts. The decoder does not broadcast over a leading particle
  dimension (softmax over dim 1; BatchNorm1d(V) reads ``[r, V, V]`` as (N, C, L) at V documents).
* scANVI-like (Pyro's single-cell example): networks ``Linear → BatchNorm1d → ReLU`` applied to
  inputs flattened to two dimensions (so they broadcast), a zero-inflated negative binomial
  likelihood, a cell-type label y enumerated in the guide, and every site scaled by
  ``poutine.scale`` (1 / (batch × genes)).

Pyro's reference is its ELBO run one particle at a time (``vectorize_particles=False``), many
times; pyrovae must agree within 4 standard errors (both samples' errors), with the networks in
evaluation mode and in training mode, and no evaluation may move a BatchNorm running statistic.
"""
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, TraceMeanField_ELBO, config_enumerate
from torch import nn
from torch.nn import functional as F

import pyrovae
from pyrovae import analytic_elbo, iwae_bound, mc_elbo
from pyrovae.errors import InputTypeError, PairError
from pyrovae.inference.callbacks import Callback
from pyrovae.inference.estimators import elbo_parts, log_weights
from pyrovae.inference.pairs import check_pair_on
from pyrovae.inference.state import Snapshot, modules_of
from pyrovae.inference.train import Trainer

V, TOPICS, HIDDEN = 10, 3, 6  # ProdLDA: vocabulary, topics, encoder width
WORDS = 20  # every document has this many words
GENES, LATENT, TYPES = 5, 2, 3  # scANVI: genes, latent size, cell types


def randomize_norms(module, seed=0):
    """BatchNorm running statistics and affine parameters far from (0, 1): evaluation mode depends on them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.3)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return module


# -- ProdLDA-like --------------------------------------------------------------------------------
class TopicModel(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.ModuleDict(dict(
            fc1=nn.Linear(V, HIDDEN), fc2=nn.Linear(HIDDEN, HIDDEN), drop=nn.Dropout(0.2),
            mu=nn.Linear(HIDDEN, TOPICS), lv=nn.Linear(HIDDEN, TOPICS),
            bn_mu=nn.BatchNorm1d(TOPICS, affine=False), bn_lv=nn.BatchNorm1d(TOPICS, affine=False)))
        self.decoder = nn.ModuleDict(dict(drop=nn.Dropout(0.2), beta=nn.Linear(TOPICS, V, bias=False),
                                          bn=nn.BatchNorm1d(V, affine=False)))
        randomize_norms(self)

    def decode(self, theta):
        d = self.decoder
        return F.softmax(d.bn(d.beta(d.drop(theta))), dim=1)  # as the tutorial writes it: 2-d inputs only

    def model(self, docs):
        pyro.module("topic_decoder", self.decoder)
        with pyro.plate("documents", docs.shape[0]):
            logtheta = pyro.sample("logtheta", dist.Normal(docs.new_zeros(TOPICS), 1.0).to_event(1))
            pyro.sample("obs", dist.Multinomial(WORDS, self.decode(F.softmax(logtheta, -1))), obs=docs)

    def guide(self, docs):
        pyro.module("topic_encoder", self.encoder)
        e = self.encoder
        with pyro.plate("documents", docs.shape[0]):
            h = e.drop(F.softplus(e.fc2(F.softplus(e.fc1(docs)))))
            loc, logvar = e.bn_mu(e.mu(h)), e.bn_lv(e.lv(h))
            pyro.sample("logtheta", dist.Normal(loc, (0.5 * logvar).exp()).to_event(1))


def documents(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    words = torch.multinomial(torch.softmax(torch.randn(V, generator=g), 0).expand(n, V), WORDS, replacement=True,
                              generator=g)
    return F.one_hot(words, V).sum(1).float()


# -- scANVI-like ---------------------------------------------------------------------------------
def layers(sizes):
    """Linear → BatchNorm1d → ReLU between ``sizes``, a Linear last (scANVI's make_fc)."""
    out = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        out += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*out, nn.Linear(sizes[-2], sizes[-1]))


def flat(net, *inputs):
    """``net`` on the inputs broadcast and concatenated along the last dimension, flattened to 2-d and back."""
    shape = torch.broadcast_shapes(*[t.shape[:-1] for t in inputs])
    x = torch.cat([t.expand(shape + t.shape[-1:]) for t in inputs], -1)
    return net(x.reshape(-1, x.shape[-1])).reshape(shape + (-1,))


class CellModel(nn.Module):
    def __init__(self, batch, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.scale_factor = 1.0 / (batch * GENES)
        self.z2_decoder = layers([LATENT + TYPES, 8, 2 * LATENT])
        self.x_decoder = layers([LATENT, 8, 2 * GENES])
        self.z1_encoder = layers([GENES, 8, 2 * LATENT + 2])
        self.classifier = layers([LATENT, 8, TYPES])
        self.z2_encoder = layers([LATENT + TYPES, 8, 2 * LATENT])
        self.inverse_dispersion = nn.Parameter(torch.full((GENES,), 2.0))
        randomize_norms(self)

    def model(self, x):
        pyro.module("cells", self)
        with pyro.plate("batch", x.shape[0]), poutine.scale(scale=self.scale_factor):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(LATENT), 1.0).to_event(1))
            y = pyro.sample("y", dist.OneHotCategorical(logits=x.new_zeros(TYPES)))
            loc, scale = flat(self.z2_decoder, z2, y).chunk(2, -1)
            z1 = pyro.sample("z1", dist.Normal(loc, F.softplus(scale) + 1e-2).to_event(1))
            library = pyro.sample("l", dist.LogNormal(x.new_full((1,), 2.5), 0.5).to_event(1))
            gate_logits, mu = flat(self.x_decoder, z1).chunk(2, -1)
            theta = F.softplus(self.inverse_dispersion)
            nb_logits = (library * F.softmax(mu, -1) + 1e-6).log() - (theta + 1e-6).log()
            pyro.sample("x", dist.ZeroInflatedNegativeBinomial(theta, logits=nb_logits, gate_logits=gate_logits)
                        .to_event(1), obs=x)

    @config_enumerate
    def guide(self, x):
        pyro.module("cells", self)
        with pyro.plate("batch", x.shape[0]), poutine.scale(scale=self.scale_factor):
            out = flat(self.z1_encoder, x.log1p())
            z1_loc, z1_scale = out[..., :LATENT], F.softplus(out[..., LATENT:2 * LATENT]) + 1e-2
            l_loc, l_scale = out[..., -2:-1], F.softplus(out[..., -1:]) + 1e-2
            pyro.sample("l", dist.LogNormal(l_loc, l_scale).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(z1_loc, z1_scale).to_event(1))
            y = pyro.sample("y", dist.OneHotCategorical(logits=flat(self.classifier, z1)))
            loc, scale = flat(self.z2_encoder, z1, y).chunk(2, -1)
            pyro.sample("z2", dist.Normal(loc, F.softplus(scale) + 1e-2).to_event(1))


def cells(n, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.rand(n, GENES, generator=g) * 8) * (torch.rand(n, GENES, generator=g) > 0.3)


# -- helpers ------------------------------------------------------------------------------------
def pyro_rows(elbo, pair, args, draws, scale=1.0):
    """Pyro's ELBO of the batch (summed over it, its sites' own scale divided out) for ``draws``
    independent particles run one at a time."""
    return torch.tensor([-elbo.loss(*pair, *args) / scale for _ in range(draws)])


def agree(ours, theirs):
    """|difference of means| ≤ 4 standard errors of the two samples together."""
    se = math.sqrt(ours.var().item() / len(ours) + theirs.var().item() / len(theirs))
    gap = abs(ours.mean().item() - theirs.mean().item())
    return gap <= 4 * se, f"{ours.mean().item():.3f} vs {theirs.mean().item():.3f}, 4 SE = {4 * se:.3f}"


def buffers(module):
    return {n: b.clone() for n, b in module.named_buffers()}


def same_buffers(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- ProdLDA-like: the estimators ---------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("n", [V - 1, V, V + 1])
def test_topic_model_estimators_give_pyros_number(n, training):
    pyro.clear_param_store()
    net, docs = TopicModel().train(training), documents(n)
    pair = (net.model, net.guide)
    pyro.set_rng_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (at n = V: the vectorized particles are refused)
        ours = log_weights(*pair, docs, num_particles=150, analytic=True).sum(-1)
    theirs = pyro_rows(TraceMeanField_ELBO(), pair, (docs,), 150)
    ok, text = agree(ours, theirs)
    assert ok, text


def test_topic_model_at_vocabulary_size_batch_refuses_vectorized_particles():
    pyro.clear_param_store()
    net, docs = TopicModel().eval(), documents(V)
    with pytest.warns(UserWarning, match=r"TopicModel.model/TopicModel.guide.*one at a time"):
        analytic_elbo(net.model, net.guide, docs, num_particles=2)


def test_estimators_leave_buffers_and_modes_in_eval_and_move_them_once_in_training():
    """Evaluation mode: nothing moves. Training mode: one forward pass of each BatchNorm per particle
    (run one at a time here), as Pyro's ELBO with ``vectorize_particles=False``: the pair check and
    the vectorization check move nothing."""
    pyro.clear_param_store()
    net, docs = TopicModel().eval(), documents(V + 1)
    before = buffers(net)
    mc_elbo(net.model, net.guide, docs, num_particles=3)
    assert same_buffers(before, buffers(net)) and not net.training
    net.train()
    mc_elbo(net.model, net.guide, docs, num_particles=3)
    assert net.training
    assert net.encoder.bn_mu.num_batches_tracked.item() == 3
    assert net.decoder.bn.num_batches_tracked.item() == 3


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_the_pair_check_leaves_parameters_buffers_modes_and_random_state(training):
    pyro.clear_param_store()
    net, docs = TopicModel().train(training), documents(V)
    check_pair_on(net.model, net.guide, docs)  # creates the pair's parameters in the store
    before, rng = Snapshot(modules_of(net.model, net.guide)), torch.get_rng_state()
    check_pair_on(net.model, net.guide, docs)
    assert all(torch.equal(t, saved) for t, saved in before.tensors)  # every parameter and buffer
    assert [m.training for m in before.subs] == [training] * len(before.subs)
    assert torch.equal(torch.get_rng_state(), rng)
    assert net.decoder.bn.num_batches_tracked.item() == 0


# -- the trainer: modes, buffers, units ----------------------------------------------------------
class Watch(Callback):
    """What the steps and the evaluation see: modes at every step, buffers after the last step and after the epoch."""

    def __init__(self, net):
        self.net, self.modes, self.after_steps, self.after_epoch = net, [], [], []

    def on_step(self, state):
        self.modes.append({m.training for m in self.net.modules()})
        self.last = buffers(self.net)

    def on_epoch_end(self, state):
        self.after_steps.append(self.last)
        self.after_epoch.append(buffers(self.net))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_trainer_steps_in_training_mode_evaluates_in_eval_mode_and_restores_the_mode(mode):
    pyro.clear_param_store()
    net, docs = TopicModel(), documents(3 * V)
    net.train(mode == "train")
    watch = Watch(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = pyrovae.train(net.model, net.guide, docs, epochs=2, batch_size=V, elbo="mean-field",
                                test_data=documents(2 * V, seed=5), progress=False, seed=0, callbacks=[watch],
                                num_particles=2)
    assert watch.modes and all(m == {True} for m in watch.modes)
    assert all(same_buffers(a, b) for a, b in zip(watch.after_steps, watch.after_epoch))  # evaluation moved nothing
    assert {m.training for m in net.modules()} == {mode == "train"}
    # the history's test ELBO is the eval-mode ELBO of the trained pair: Pyro's number (4 SE)
    net.eval()
    test = documents(2 * V, seed=5)
    theirs = pyro_rows(TraceMeanField_ELBO(), (net.model, net.guide), (test,), 100) / len(test)
    spread = torch.stack([elbo_parts(net.model, net.guide, test)["elbo"].mean() for _ in range(50)])
    se = math.sqrt(spread.var().item() + theirs.var().item() / len(theirs))
    assert abs(history[-1]["test_elbo"] - theirs.mean().item()) <= 4 * se


def test_evaluate_leaves_buffers_and_modes():
    pyro.clear_param_store()
    net, docs = TopicModel().train(), documents(V)
    trainer = Trainer(net.model, net.guide, docs, batch_size=V, elbo="mean-field",
                                              num_particles=1, test_data=docs, device="cpu")
    before = Snapshot(modules_of(net.model, net.guide))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.evaluate()
    assert all(torch.equal(t, saved) for t, saved in before.tensors)
    assert all(m.training for m in net.modules())


# -- scANVI-like --------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_cell_model_estimators_give_pyros_number(training):
    pyro.clear_param_store()
    n = 8
    net, x = CellModel(n).train(training), cells(n)
    pair = (net.model, net.guide)
    pyro.set_rng_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = log_weights(*pair, x, num_particles=100, analytic=True).sum(-1)
    theirs = pyro_rows(TraceEnum_ELBO(max_plate_nesting=1), pair, (x,), 100, net.scale_factor)
    ok, text = agree(ours, theirs)
    assert ok, text
    if not training:
        before = buffers(net)
        iwae_bound(*pair, x, num_samples=20)
        assert same_buffers(before, buffers(net))


@pytest.mark.slow
def test_cell_model_train_elbo_is_in_nats_per_datapoint():
    """The pair scales its sites by 1/(batch × genes); train_elbo is still nats per datapoint, the
    number Pyro's TraceEnum_ELBO gives (its scale divided out) in training mode."""
    pyro.clear_param_store()
    n = 8
    net, x = CellModel(n).train(), cells(n)
    pyro.set_rng_seed(1)
    theirs = pyro_rows(TraceEnum_ELBO(max_plate_nesting=1), (net.model, net.guide), (x,), 64,
                       net.scale_factor) / n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = pyrovae.train(net.model, net.guide, x, epochs=1, batch_size=n, elbo="enum", lr=1e-12,
                                num_particles=32, progress=False, seed=0)
    ours = history[0]["train_elbo"]
    se = theirs.std().item() * math.sqrt(1 / 64 + 1 / 32)
    assert abs(ours - theirs.mean().item()) <= 4 * se, (ours, theirs.mean().item(), 4 * se)


# -- errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("elbo, gradient", [("mean-field", "standard"), ("trace", "stl")])
def test_a_discrete_guide_site_under_a_reparameterized_only_elbo_names_the_site_and_the_remedy(elbo, gradient):
    pyro.clear_param_store()
    net = CellModel(8)
    with pytest.raises(PairError, match=r"guide site\(s\) 'y' \(OneHotCategorical\).*elbo='enum'") as e:
        pyrovae.train(net.model, net.guide, cells(8), epochs=1, batch_size=8, elbo=elbo, step=pyrovae.StepSettings(gradient=gradient),
                      progress=False)
    assert "\n" not in str(e.value)


def test_iwae_gradient_refuses_a_sampled_discrete_site():
    pyro.clear_param_store()
    net = CellModel(8)
    guide = poutine.infer_config(net.guide, lambda site: {"enumerate": None})  # y no longer enumerated: sampled
    with pytest.raises(PairError, match=r"'y'.*elbo='enum'"):
        iwae_bound(net.model, guide, cells(8), num_samples=2, grad=True)


@pytest.mark.parametrize("estimator, option", [(mc_elbo, "num_particles"), (analytic_elbo, "num_particles"),
                                               (iwae_bound, "num_samples")])
def test_a_number_after_the_data_names_the_option(estimator, option):
    net = TopicModel()
    with pytest.raises(InputTypeError, match=rf"{option}=10\b") as e:
        estimator(net.model, net.guide, documents(4), 10)
    assert "\n" not in str(e.value)


def test_sites_scaled_by_different_factors_leave_train_elbo_in_scaled_units_with_a_warning():
    pyro.clear_param_store()
    net = TopicModel()
    with pytest.warns(UserWarning, match="different factors.*train_elbo is in the pair's scaled units"):
        Trainer(poutine.scale(net.model, scale=0.5), net.guide, documents(V + 1), batch_size=V + 1, elbo="trace",
                num_particles=1, test_data=None, device="cpu")


def test_compare_scores_in_evaluation_mode_and_restores_the_mode():
    from pyrovae import VAE
    from pyrovae.lab.compare import compare_estimators

    torch.manual_seed(1)
    vae = VAE((6, 5), 3, hidden=(16,)).double().train()
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, _: seen.append(m.training)) for m in vae.modules()
             if isinstance(m, nn.Linear)]
    x = torch.rand(8, 6, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    compare_estimators(vae, x, particles=(1,), iw_samples=(2,), max_k=2, batch_size=8, seed=0)
    for h in hooks:
        h.remove()
    assert seen and not any(seen)
    assert all(m.training for m in vae.modules())
