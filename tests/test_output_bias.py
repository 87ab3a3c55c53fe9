"""VAE.init_output_bias and model.init_output_bias: the decoder starts at the data's mean.

With the last layer's weights set to zero the decoder's output is its bias whatever z is, so
E[x|z] must then be the data's mean x̄ exactly: sigmoid(logit(clamp(x̄))) for the Bernoulli,
loc = x̄ for the Gaussians and the Laplace; for the continuous Bernoulli and the discretized
logistic (means that are not the location) the bisection must reach x̄ to 10⁻⁴.
"""
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyrovae
from pyrovae.app import config as config_module
from pyrovae.app.cli import main
from pyrovae.app.run import data_mean, load_data, load_run
from pyrovae.components import Likelihood
from pyrovae.errors import ConfigError, DataError, InputError


def data(shape, n=64, seed=0):
    """n intensities in [0, 1] with a mean that varies from pixel to pixel (0.01 to 0.99)."""
    g = torch.Generator().manual_seed(seed)
    level = torch.linspace(0.01, 0.99, int(torch.tensor(shape).prod())).reshape(shape)
    return torch.bernoulli(level.expand(n, *shape), generator=g) * 0.5 + 0.5 * level


def zero_last_weight(vae):
    with torch.no_grad():
        vae.decoder.net[-1].weight.zero_()


def decoded_mean(vae, latent_dim=3):
    """E[x|z] at 5 random z after the last layer's weights are zeroed: [5, *input_shape]."""
    zero_last_weight(vae)
    return vae.decode_mean(torch.randn(5, latent_dim, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "gaussian-learned", "gaussian-decoder", "laplace"])
def test_an_mlp_decoder_starts_at_the_data_mean(likelihood):
    torch.manual_seed(0)
    x = data((6, 5))
    vae = pyrovae.VAE((6, 5), 3, hidden=(8,), likelihood=likelihood)
    before = vae.decoder.net[-1].bias.detach().clone()
    vae.init_output_bias(x)
    target = x.mean(0).clamp(1e-3, 1 - 1e-3) if likelihood == "bernoulli" else x.mean(0)
    torch.testing.assert_close(decoded_mean(vae), target.expand(5, 6, 5), atol=1e-5, rtol=0)
    if likelihood == "bernoulli":
        torch.testing.assert_close(vae.decoder.net[-1].bias, torch.logit(target).flatten())
    if likelihood == "gaussian-decoder":  # the decoded scale's channel is left as it was
        assert torch.equal(vae.decoder.net[-1].bias[30:], before[30:])


def test_the_mean_itself_gives_the_same_bias_and_a_mean_of_zero_is_clamped():
    x = data((4, 4))
    x[:, 0, 0] = 0.0
    a, b = (pyrovae.VAE((4, 4), 3, hidden=(8,)) for _ in range(2))
    a.init_output_bias(x)
    b.init_output_bias(x.mean(0))
    assert torch.equal(a.decoder.net[-1].bias, b.decoder.net[-1].bias)
    assert a.decoder.net[-1].bias[0].item() == pytest.approx(torch.logit(torch.tensor(1e-3)).item(), abs=1e-5)


@pytest.mark.parametrize("likelihood, options, tol", [("continuous-bernoulli", {}, 1e-4),
                                                      ("discretized-logistic", {}, 1e-5),
                                                      ("discretized-logistic", {"components": 3}, 1e-5)])
def test_likelihoods_whose_mean_is_not_their_location_are_inverted_numerically(likelihood, options, tol):
    torch.manual_seed(0)
    x = data((4, 4))
    vae = pyrovae.VAE((4, 4), 3, hidden=(8,), likelihood=likelihood, likelihood_options=options)
    with torch.no_grad():  # scales and mixture weights away from 0, to show they are taken into account
        vae.decoder.net[-1].bias.normal_()
    before = vae.decoder.net[-1].bias.detach().clone()
    vae.init_output_bias(x)
    clamp = 0.1 if likelihood == "continuous-bernoulli" else 1e-3
    target = x.mean(0).clamp(clamp, 1 - clamp)
    torch.testing.assert_close(decoded_mean(vae), target.expand(5, 4, 4), atol=tol, rtol=0)
    moved = (vae.decoder.net[-1].bias != before).reshape(-1, 16).any(-1).tolist()
    K = options.get("components", 1)
    expected = [True] if likelihood == "continuous-bernoulli" else ([True, False] if K == 1 else
                                                                     [False] * K + [True] * K + [False] * K)
    assert moved == expected  # only the location channels were set


@pytest.mark.parametrize("shape", [(16, 16), (3, 16, 16)])
def test_a_conv_decoder_gets_the_per_channel_mean(shape):
    torch.manual_seed(0)
    x = data(shape)
    vae = pyrovae.VAE(shape, 3, net="conv", likelihood="gaussian")
    vae.init_output_bias(x)
    channels = x.mean(0).reshape(-1, 256).mean(-1)  # [C]
    expected = channels[:, None].expand(-1, 256).reshape(shape)
    torch.testing.assert_close(decoded_mean(vae), expected.expand(5, *shape), atol=1e-5, rtol=0)
    assert vae.decoder.net[-1].bias.shape == (channels.numel(),)


class Poisson(Likelihood):
    """A likelihood with no output_for_mean."""

    def params(self, out):
        return {"rate": nn.functional.softplus(self._channel(out, 0))}

    def distribution(self, rate):
        return dist.Poisson(rate)


def test_clear_errors():
    x = data((4, 4))
    with pytest.raises(InputError, match="init_output_bias is not defined for likelihood 'Poisson'"):
        pyrovae.VAE((4, 4), 3, hidden=(8,), likelihood=Poisson((4, 4))).init_output_bias(x)
    own = pyrovae.VAE((4, 4), 3, hidden=(8,), decoder=nn.Sequential(nn.Linear(3, 16), nn.Tanh()))
    with pytest.raises(InputError, match="needs a decoder whose last layer is an nn.Linear.*ending in Tanh"):
        own.init_output_bias(x)
    vae = pyrovae.VAE((4, 4), 3, hidden=(8,))
    with pytest.raises(DataError, match=r"x must have shape \[batch, 4, 4\]"):
        vae.init_output_bias(x.flatten(1))
    with pytest.raises(DataError, match="x must lie in \\[0, 1\\]"):
        vae.init_output_bias(x * 2)


def test_the_config_key_defaults_to_false_and_is_refused_for_other_families():
    assert config_module.load(None)["model"]["init_output_bias"] is False
    with pytest.raises(ConfigError, match="init_output_bias = true is supported for model.family = 'vae' only, "
                                          "got 'cvae'"):
        config_module.load(None, ["model.init_output_bias=true", "model.family=cvae"])


PPCA = ["--set", "data.dataset=ppca", "--set", "model.latent_dim=2", "--set", "model.hidden=[16]",
        "--set", "model.likelihood=gaussian", "--set", "train.batch_size=500", "--set", "train.device=cpu",
        "--set", "train.epochs=1", "--set", "train.lr=1e-12"]


@pytest.mark.slow
@pytest.mark.parametrize("init", [True, False])
def test_the_config_key_sets_the_bias_of_a_fresh_run(init, tmp_path):
    """One epoch at lr 10⁻¹² (a bias that does not move): the run's decoder bias is x̄ of the
    training split (PPCA's offsets b ~ N(0, 1)) with the key, PyTorch's init (|b| ≤ 1/4) without."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *PPCA, "--set", f"model.init_output_bias={str(init).lower()}"]) == 0
    cfg, vae, _ = load_run(out, data=False)
    mean = data_mean(load_data(cfg)[0])
    bias = vae.decoder.net[-1].bias.detach()
    assert torch.allclose(bias, mean, atol=1e-6) is init
    assert mean.abs().max() > 0.5  # so PyTorch's init (|b| ≤ 1/4) cannot pass for it
