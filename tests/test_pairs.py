"""pyrovae.inference.pairs: a model/guide pair that does not match is refused, naming the site(s).

Small hand-written pairs over a batch of 8 (one per kind of mismatch), and valid pairs that must
pass: plates with and without a size, auxiliary guide sites, guides with a smaller support than
the model's, vectorized particles, an enumerated discrete latent, Pyro's autoguides, the built-in
VAE with several priors and guides.
"""
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import config_enumerate
from pyro.infer.autoguide import AutoDelta, AutoDiagonalNormal, AutoNormal
from torch import nn

from pyrovae import VAE
import pyrovae
from pyrovae.errors import InputError, PairError
from pyrovae.inference.pairs import check_pair, check_pair_on, describe_support, support_within
from pyrovae.inference.traces import particle_traces, traces

B, L = 8, 2


@pytest.fixture
def x():
    return torch.randn(B, L)


def normal(*shape):
    return dist.Normal(torch.zeros(shape), torch.ones(shape))


def refused(model, guide, *args) -> str:
    """The PairError message of ``check_pair_on`` (checked to be one line)."""
    with pytest.raises(PairError) as info:
        check_pair_on(model, guide, *args)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- the model every mismatch is built against --------------------------------------------------------
def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", normal(L).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x.mean(-1, keepdim=True).expand(-1, L), 1.0).to_event(1))


def test_the_matching_pair_passes(x):
    check_pair_on(model, guide, x)
    check_pair(*traces(model, guide, x))


# -- a latent of the model without a guide site -----------------------------------------------------
def two_latents(x):
    with pyro.plate("data", x.shape[0]):
        z1 = pyro.sample("z1", normal(L).to_event(1))
        z2 = pyro.sample("z2", normal(L).to_event(1))
        pyro.sample("x", dist.Normal(z1 + z2, 1.0).to_event(1), obs=x)


def guide_z1_only(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z1", normal(B, L).to_event(1))


def test_a_latent_without_a_guide_site_is_refused(x):
    # replayed on the guide's trace, the model draws z2 from its prior: only the traces show it
    model_trace, guide_trace = traces(two_latents, guide_z1_only, x)
    assert not model_trace.nodes["z2"]["is_observed"] and "z2" not in guide_trace.nodes
    message = refused(two_latents, guide_z1_only, x)
    assert message == ("the guide has no sample site for the model's latent 'z2' (the guide samples 'z1'; every "
                       "latent of the model needs a guide site of its name, unless the model enumerates it with "
                       "infer={'enumerate': 'parallel'})")
    with pytest.raises(PairError, match="latent 'z2'"):
        check_pair(model_trace, guide_trace)


def test_every_missing_latent_is_named(x):
    def empty_guide(x):
        pass

    message = refused(two_latents, empty_guide, x)
    assert "latents 'z1', 'z2'" in message and "the guide samples nothing" in message


# -- a guide site the model does not have ----------------------------------------------------------
def guide_with_w(x):
    guide(x)
    pyro.sample("w", dist.Normal(0.0, 1.0))


def test_a_guide_site_the_model_lacks_is_refused(x):
    message = refused(model, guide_with_w, x)
    assert message.startswith("the guide samples 'w', which the model does not have (the model's latents: 'z'; ")
    assert "infer={'is_auxiliary': True}" in message


def test_an_auxiliary_guide_site_passes(x):
    def guide_with_auxiliary(x):
        u = pyro.sample("u", dist.Normal(0.0, 1.0), infer={"is_auxiliary": True})
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(u.expand(B, L), 1.0).to_event(1))

    model_trace, guide_trace = traces(model, guide_with_auxiliary, x)
    assert "u" in guide_trace.nodes and "u" not in model_trace.nodes
    check_pair(model_trace, guide_trace)


def test_several_problems_make_one_error_of_one_line(x):
    def bad(x):
        guide_with_w(x)
        with pyro.plate("data2", x.shape[0]):
            pyro.sample("v", dist.Normal(0.0, 1.0))

    message = refused(two_latents, bad, x)
    assert "latents 'z1', 'z2'" in message and "the guide samples 'z', 'w', 'v', which" in message
    assert message.count("; ") >= 2


# -- shapes -------------------------------------------------------------------------------------------
def test_a_guide_value_of_another_event_shape_is_refused(x):
    def wide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", normal(B, 3).to_event(1))

    assert refused(model, wide, x) == ("site 'z': the guide's value has shape [8, 3] (event_shape [3]) but the "
                                       "model's distribution has batch_shape [8] and event_shape [2]")


def test_a_guide_event_shape_that_differs_is_refused_even_where_the_value_fits(x):
    def model_one_event(x):
        z = pyro.sample("z", normal(B, L).to_event(2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    message = refused(model_one_event, guide, x)
    assert message == ("site 'z': the guide's value has shape [8, 2] (event_shape [2]) but the model's "
                       "distribution has batch_shape [] and event_shape [8, 2]")


def test_a_guide_batch_that_does_not_broadcast_is_refused(x):
    def five(x):  # no plate: batch [5] against the model's plate of 8
        pyro.sample("z", normal(5, L).to_event(1))

    def model_z_only(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", normal(L).to_event(1))

    message = refused(model_z_only, five, x)
    assert message == ("site 'z': the guide's value has shape [5, 2] but the model's distribution has batch_shape "
                       "[8] and event_shape [2]")


def test_a_shape_mismatch_that_breaks_the_model_is_refused_as_the_pair_error(x):
    decoder = nn.Linear(L, L)

    def decoding_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", normal(L).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 1.0).to_event(1), obs=x)

    def wide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", normal(B, 3).to_event(1))

    with pytest.raises(RuntimeError):  # what the pair does unchecked
        traces(decoding_model, wide, x)
    with pytest.raises(PairError) as info:
        check_pair_on(decoding_model, wide, x)
    assert str(info.value).startswith("site 'z': the guide's value has shape [8, 3]")
    assert str(info.value).endswith("; the model then failed with RuntimeError")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_a_model_that_fails_for_another_reason_raises_its_own_error(x):
    def failing_model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", normal(L).to_event(1))
            raise KeyError("not a pair problem")

    with pytest.raises(KeyError, match="not a pair problem"):
        check_pair_on(failing_model, guide, x)


def test_vectorized_particles_add_batch_dimensions_that_pass(x):
    model_trace, guide_trace = particle_traces(model, guide, 3, 1, x)
    assert guide_trace.nodes["z"]["value"].shape == (3, B, L)
    check_pair(model_trace, guide_trace)


# -- observed sites ---------------------------------------------------------------------------------
def test_an_observed_site_the_guide_samples_is_refused(x):
    def samples_x(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", normal(B, L).to_event(1))
            pyro.sample("x", normal(B, L).to_event(1))

    assert refused(model, samples_x, x) == "site 'x' is observed in the model but sampled by the guide"


# -- supports ---------------------------------------------------------------------------------------
def one_latent(prior):
    """A model with one latent z of ``prior`` (batch [8]) and an observation of it."""
    def m(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Normal(z.float().unsqueeze(-1).expand(-1, L), 1.0).to_event(1), obs=x)
    return m


def guide_of(family):
    def g(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", family)
    return g


@pytest.mark.parametrize("prior, family, expected", [
    (dist.LogNormal(0.0, 1.0), dist.Normal(torch.zeros(B), 1.0), "the guide's support real is not within the "
                                                                   "model's support positive"),
    (dist.Beta(2.0, 2.0), dist.Gamma(torch.ones(B), 1.0), "the guide's support nonnegative is not within the "
                                                            "model's support unit_interval"),
    (dist.Bernoulli(0.5), dist.Normal(torch.zeros(B), 1.0), "the guide's support real (continuous) is not within "
                                                              "the model's support boolean (discrete)"),
    (dist.Normal(0.0, 1.0), dist.Bernoulli(torch.full((B,), 0.5)), "the guide's support boolean (discrete) is not "
                                                                    "within the model's support real (continuous)"),
    (dist.Bernoulli(0.5), dist.Categorical(logits=torch.zeros(B, 3)), "the guide's support integer_interval(0, 2) "
                                                                       "is not within the model's support boolean"),
], ids=["real-for-positive", "positive-for-unit", "continuous-for-discrete", "discrete-for-continuous",
        "three-values-for-two"])
def test_a_guide_support_outside_the_models_is_refused(x, prior, family, expected):
    assert refused(one_latent(prior), guide_of(family), x) == f"site 'z': {expected}"


@pytest.mark.parametrize("prior, family", [
    (dist.LogNormal(0.0, 1.0), dist.Gamma(torch.ones(B), 1.0)),     # [0, ∞) within (0, ∞): endpoints
    (dist.Gamma(1.0, 1.0), dist.LogNormal(torch.zeros(B), 1.0)),
    (dist.Normal(0.0, 1.0), dist.Beta(torch.ones(B), 1.0)),          # unit interval within real
    (dist.Normal(0.0, 1.0), dist.Gamma(torch.ones(B), 1.0)),         # positive within real
    (dist.Uniform(-1.0, 2.0), dist.Beta(torch.ones(B), 1.0)),
    (dist.Categorical(logits=torch.zeros(3)), dist.Bernoulli(torch.full((B,), 0.5))),
], ids=["gamma-for-lognormal", "lognormal-for-gamma", "beta-for-normal", "gamma-for-normal", "beta-for-uniform",
        "bernoulli-for-categorical"])
def test_a_guide_support_within_the_models_passes(x, prior, family):
    model_trace, guide_trace = traces(one_latent(prior), guide_of(family), x)
    assert model_trace.nodes["z"]["fn"].support is not guide_trace.nodes["z"]["fn"].support
    check_pair(model_trace, guide_trace)


@pytest.mark.parametrize("guide_support, model_support, expected", [
    (constraints.real, constraints.positive, False),
    (constraints.positive, constraints.real, True),
    (constraints.independent(constraints.positive, 1), constraints.real_vector, True),
    (constraints.real_vector, constraints.independent(constraints.positive, 1), False),
    (constraints.unit_interval, constraints.positive, True),
    (constraints.positive, constraints.greater_than(2.0), False),
    (constraints.interval(0.0, 3.0), constraints.less_than(2.0), False),
    (constraints.real_vector, constraints.simplex, False),
    (constraints.boolean, constraints.integer_interval(0, 2), True),
    (constraints.nonnegative_integer, constraints.integer_interval(0, torch.tensor([3.0, 4.0])), False),
    (constraints.boolean, constraints.real, False),
    (constraints.positive_definite, constraints.real, None),      # no elementwise range: not refused
    (constraints.real, constraints.lower_cholesky, None),
    (constraints.dependent, constraints.real, None),
])
def test_support_within(guide_support, model_support, expected):
    assert support_within(guide_support, model_support) is expected


def test_supports_are_named_as_pyro_spells_them():
    assert [describe_support(c) for c in (constraints.real_vector, constraints.greater_than(0.0),
                                          constraints.interval(-1.0, 1.0), constraints.nonnegative)] == \
        ["real", "positive", "interval(-1, 1)", "nonnegative"]


def test_a_delta_guide_is_not_refused_for_its_declared_support(x):
    # Delta declares the support real whatever its value; AutoDelta places positive values there
    model_trace, guide_trace = traces(one_latent(dist.LogNormal(0.0, 1.0)), guide_of(dist.Delta(torch.ones(B))), x)
    assert guide_trace.nodes["z"]["fn"].support is not model_trace.nodes["z"]["fn"].support
    check_pair(model_trace, guide_trace)


# -- plates, enumeration, autoguides, the built-in VAE ----------------------------------------------
def test_a_plate_declared_without_a_size_passes(x):
    def unsized_model(x):
        with pyro.plate("data"):
            z = pyro.sample("z", normal(B, L).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def unsized_guide(x):
        with pyro.plate("data"):
            pyro.sample("z", normal(B, L).to_event(1))

    check_pair_on(unsized_model, unsized_guide, x)
    with pytest.raises(PairError, match="'w'"):
        check_pair_on(unsized_model, lambda x: (unsized_guide(x), pyro.sample("w", dist.Normal(0.0, 1.0))), x)


def test_a_vae_like_pair_passes(x):
    encoder, decoder = nn.Linear(L, 2 * L), nn.Linear(L, L)

    def vae_model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", normal(L).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 1.0).to_event(1), obs=x)

    def vae_guide(x):
        pyro.module("encoder", encoder)
        loc, raw = encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw)).to_event(1))

    check_pair_on(vae_model, vae_guide, x)
    with pytest.raises(PairError, match="site 'x' is observed"):
        check_pair_on(vae_model, lambda x: (vae_guide(x), pyro.sample("x", normal(B, L).to_event(1))), x)


def semi_supervised(enumerate_in_model: bool):
    """An M2-like pair: y ~ Categorical(3) and z ~ Normal in the model; the guide samples z, and y
    (with config_enumerate) unless the model enumerates it."""
    infer = {"enumerate": "parallel"} if enumerate_in_model else {}

    def m(x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=torch.zeros(3)), infer=infer)
            z = pyro.sample("z", normal(L).to_event(1))
            pyro.sample("x", dist.Normal(z + y.float().unsqueeze(-1), 1.0).to_event(1), obs=x)

    @config_enumerate
    def g(x):
        with pyro.plate("data", x.shape[0]):
            if not enumerate_in_model:
                pyro.sample("y", dist.Categorical(logits=torch.zeros(B, 3)))
            pyro.sample("z", normal(B, L).to_event(1))

    return m, g


@pytest.mark.parametrize("enumerate_in_model", [False, True])
def test_an_enumerated_discrete_latent_passes(x, enumerate_in_model):
    m, g = semi_supervised(enumerate_in_model)
    model_trace, guide_trace = traces(m, g, x)
    assert ("y" in guide_trace.nodes) is not enumerate_in_model
    check_pair(model_trace, guide_trace)


def test_a_model_latent_not_enumerated_still_needs_a_guide_site(x):
    m, _ = semi_supervised(False)
    _, g = semi_supervised(True)  # a guide without y
    assert "latent 'y'" in refused(m, g, x)


@pytest.mark.parametrize("autoguide", [AutoNormal, AutoDiagonalNormal, AutoDelta])
def test_pyros_autoguides_pass(x, autoguide):
    def positive_model(x):
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", normal(L).to_event(1))
            pyro.sample("x", dist.Normal(z, s).to_event(1), obs=x)

    auto = autoguide(positive_model)
    model_trace, guide_trace = traces(positive_model, auto, x)
    assert {"s", "z"} <= set(guide_trace.nodes)
    check_pair(model_trace, guide_trace)


@pytest.mark.parametrize("prior, family, num_data", [
    ("normal", "diagonal", None), ("normal", "iaf", None), ("laplace", "lowrank", None),
    ("mixture", "fullrank", None), ("vamp", "diagonal", None), ("vamp", "iaf", None),
    ("learned-normal", "diagonal", 100),
])
def test_the_builtin_vae_passes(prior, family, num_data):
    options = {"components": 3} if prior in ("mixture", "vamp") else None
    vae = VAE(6, L, hidden=(8,), prior=prior, guide=family, prior_options=options, num_data=num_data)
    data = torch.randint(0, 2, (B, 6)).float()
    check_pair_on(vae.model, vae.guide, data)
    check_pair(*particle_traces(vae.model, vae.guide, 3, 1, data))
    with pytest.raises(PairError, match="the guide samples 'w'"):
        check_pair_on(vae.model, lambda x: (vae.guide(x), pyro.sample("w", dist.Normal(0.0, 1.0))), data)


def test_check_pair_on_leaves_the_random_state_untouched(x):
    state = torch.get_rng_state()
    check_pair_on(model, guide, x)
    with pytest.raises(PairError):
        check_pair_on(two_latents, guide_z1_only, x)
    assert torch.equal(torch.get_rng_state(), state)


def test_pair_error_is_an_input_error_and_a_value_error(x):
    with pytest.raises(InputError):
        check_pair_on(model, guide_with_w, x)
    with pytest.raises(ValueError):
        check_pair_on(model, guide_with_w, x)


# -- wired in: training and every estimator refuse a mismatched pair before computing anything ----
def _missing_latent_pair():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z1 + z2, 1.0).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.zeros(2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z1", dist.Normal(loc, 1.0).to_event(1))

    return model, guide


@pytest.mark.parametrize("call", [
    lambda m, g, x: pyrovae.train(m, g, x, epochs=1, batch_size=5, progress=False),
    lambda m, g, x: pyrovae.mc_elbo(m, g, x),
    lambda m, g, x: pyrovae.analytic_elbo(m, g, x),
    lambda m, g, x: pyrovae.iwae_bound(m, g, x, num_samples=10),
    lambda m, g, x: pyrovae.elbo_parts(m, g, x),
])
def test_training_and_the_estimators_refuse_a_mismatched_pair(call):
    model, guide = _missing_latent_pair()
    with pytest.raises(PairError, match="the guide has no sample site for the model's latent 'z2'"):
        call(model, guide, torch.randn(10, 2))
