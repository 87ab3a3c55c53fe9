"""Evaluation with the decoder and the Bernoulli density compiled (pyrovae.model.compiled).

torch.compile's kernels must give the eager bound (same draws: the sampling is not compiled) to
float32 rounding, leave the model as it was after the block, and fall back to eager, with a
warning, where compiling fails. Compiling takes seconds to a minute: marked slow.
"""
import warnings

import pyro
import pytest
import torch

import pyrovae
from pyrovae.components.distributions import DiagonalNormalMixture, IndependentBernoulli, binary_log_density
from pyrovae.inference.estimators import iwae_bound
from pyrovae.model import compiled as compiled_mod
from pyrovae.model.compiled import CompiledOrEager, compiled

pytestmark = pytest.mark.slow


def small_vae(**options):
    pyro.clear_param_store()
    torch.manual_seed(0)
    return pyrovae.VAE((6, 6), 3, hidden=(16, 16), activation="tanh", **options)


@pytest.mark.parametrize("prior", ["normal", "vamp"])
def test_compiled_bound_is_the_eager_bound_and_the_model_is_restored(prior):
    mixture = DiagonalNormalMixture._grouped
    vae = small_vae(prior=prior, **({"prior_options": {"components": 7}} if prior == "vamp" else {}))
    x = torch.rand(7, 6, 6, generator=torch.Generator().manual_seed(1)).bernoulli()
    with torch.no_grad():
        pyro.set_rng_seed(0)
        eager = iwae_bound(vae.model, vae.guide, x, num_samples=200)
        with compiled(vae):
            assert isinstance(vae.decoder.forward, CompiledOrEager)
            pyro.set_rng_seed(0)
            fast = iwae_bound(vae.model, vae.guide, x, num_samples=200)
            assert not vae.decoder.forward.failed and not IndependentBernoulli.binary_density.failed
        assert not isinstance(vae.decoder.forward, CompiledOrEager)
        assert IndependentBernoulli.binary_density is binary_log_density
        assert DiagonalNormalMixture._grouped is mixture
    assert torch.allclose(fast, eager, rtol=0, atol=1e-4), (fast - eager).abs().max()
    assert not torch.equal(fast, torch.zeros_like(fast))


def test_a_function_that_cannot_compile_runs_eagerly_with_a_warning(monkeypatch):
    def broken(fn, **kwargs):
        def call(*a, **k):
            raise RuntimeError("no C++ compiler found")
        return call
    monkeypatch.setattr(compiled_mod.torch, "compile", broken)
    f = CompiledOrEager(lambda t: t * 2, "doubling")
    with pytest.warns(UserWarning, match=r"torch.compile could not compile doubling \(RuntimeError: no C\+\+ compiler"):
        assert f(torch.ones(2)).tolist() == [2.0, 2.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f(torch.ones(1)).tolist() == [2.0]  # eager from then on, no second warning


def test_a_setup_that_fails_halfway_leaves_everything_as_it_was(monkeypatch):
    import logging

    vae = small_vae()
    real = compiled_mod.CompiledOrEager

    def failing(fn, name):
        if name == "the mixture density":  # after the decoder's forward was replaced
            raise RuntimeError("cannot compile")
        return real(fn, name)
    monkeypatch.setattr(compiled_mod, "CompiledOrEager", failing)
    builder = logging.getLogger("torch.utils.cpp_extension")
    level = builder.level
    with pytest.raises(RuntimeError, match="cannot compile"):
        with compiled(vae):
            pass
    assert "forward" not in vae.decoder.__dict__ and builder.level == level
    assert IndependentBernoulli.binary_density is binary_log_density
