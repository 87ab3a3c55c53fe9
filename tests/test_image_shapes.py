"""Observation shapes: (C, H, W) images and flat (D,) data, the conv networks built from the
shape (DCGAN-like stride-2 stacks), the errors for shapes they cannot fit, and ``pyrovae
evaluate`` in bits per dimension on an 8-bit run."""
import json
import math

import pyro
import pytest
import torch
from torch import nn

import pyrovae
from pyrovae.app.cli import main
from pyrovae.components.nets import ConvDecoder, ConvEncoder, conv_plan
from pyrovae.errors import InputError

from conftest import needs_frey

#: shape → (stride-2 layers, the size they end at)
IMAGES = {(1, 28, 28): (2, (7, 7)), (3, 32, 32): (3, (4, 4)), (3, 64, 64): (4, (4, 4)), (28, 20): (2, (7, 5))}


def traces(vae, x):
    guide = pyro.poutine.trace(vae.guide).get_trace(x)
    model = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=guide)).get_trace(x)
    return guide, model


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64), (784,)])
def test_a_vae_runs_its_model_and_guide_on_images_and_flat_data(shape):
    torch.manual_seed(0)
    net = "mlp" if len(shape) == 1 else "conv"
    vae = pyrovae.VAE(shape, 6, net=net, hidden=(32,), likelihood="discretized-logistic",
                      likelihood_options={"components": 2})
    x = torch.randint(0, 256, (5,) + shape) / 255.0
    guide, model = traces(vae, x)
    assert guide.nodes["z"]["value"].shape == (5, 6)
    site = model.nodes["x"]
    assert site["fn"].batch_shape == (5,) and site["fn"].event_shape == shape
    assert vae.decoder(guide.nodes["z"]["value"]).shape == (5, 6) + shape      # P = 3K = 6 numbers per pixel
    model.compute_log_prob()
    assert site["log_prob"].shape == (5,) and torch.isfinite(site["log_prob"]).all()
    assert vae.reconstruct(x).shape == x.shape and vae.sample(2, mean=False).shape == (2,) + shape
    loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in vae.parameters() if p.grad is not None)


@pytest.mark.parametrize("shape", list(IMAGES))
def test_the_conv_stack_halves_to_about_4x4_and_mirrors_back(shape):
    layers, end = IMAGES[shape]
    chw, n, final = conv_plan(shape)
    assert (n, final) == (layers, end) and chw == ((1,) + shape if len(shape) == 2 else shape)
    enc, dec = ConvEncoder(shape), ConvDecoder(3, shape, num_params=2)
    convs = [m for m in enc.net if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32 * 2 ** i for i in range(layers)]          # DCGAN doubling
    assert all(c.stride == (2, 2) and c.kernel_size == (4, 4) and c.padding == (1, 1) for c in convs)
    x = torch.rand(2, 7, *shape)                                                 # [particles, batch, *shape]
    feature_maps = enc.net[:2 * layers](x.reshape(-1, *chw))
    assert tuple(feature_maps.shape[-2:]) == end
    assert enc(x).shape == (2, 7, 256)
    assert dec(torch.randn(2, 7, 3)).shape == (2, 7, 2) + shape
    assert [m.out_channels for m in dec.net if isinstance(m, nn.ConvTranspose2d)][-1] == 2 * chw[0]


def test_28x28_keeps_the_networks_of_before():
    """The same modules, names and sizes as the former 28×28-only networks: old checkpoints load."""
    enc, dec = ConvEncoder((28, 28)), ConvDecoder(4, (28, 28), num_params=2)
    assert {k: list(v.shape) for k, v in enc.state_dict().items()} == {
        "net.0.weight": [32, 1, 4, 4], "net.0.bias": [32], "net.2.weight": [64, 32, 4, 4], "net.2.bias": [64],
        "net.5.weight": [256, 64 * 49], "net.5.bias": [256]}
    assert {k: list(v.shape) for k, v in dec.state_dict().items()} == {
        "net.0.weight": [256, 4], "net.0.bias": [256], "net.2.weight": [64 * 49, 256], "net.2.bias": [64 * 49],
        "net.5.weight": [64, 32, 4, 4], "net.5.bias": [32], "net.7.weight": [32, 2, 4, 4], "net.7.bias": [2]}


@pytest.mark.parametrize("shape, match", [
    ((784,), r"need an image input_shape \(H, W\) or \(C, H, W\), got \(784,\); use net = 'mlp' for flat data"),
    ((3, 7, 9), r"cannot fit input_shape \(3, 7, 9\).*7x9 ends at 7x9 after 0 halving"),
    ((6, 5), r"cannot fit input_shape \(6, 5\)"),
    ((1, 100, 100), r"cannot fit input_shape \(1, 100, 100\).*100x100 ends at 25x25 after 2 halving"),
    ((2, 3, 32, 32), r"need an image input_shape.*got \(2, 3, 32, 32\)"),
])
def test_a_shape_the_conv_networks_cannot_fit_is_named(shape, match):
    with pytest.raises(InputError, match=match):
        pyrovae.VAE(shape, 4, net="conv")


def test_channels_must_match_the_number_of_layers():
    assert [m.out_channels for m in ConvEncoder((3, 32, 32), channels=(8, 16, 24)).net
            if isinstance(m, nn.Conv2d)] == [8, 16, 24]
    with pytest.raises(InputError, match=r"channels must list 3 sizes.*got \(8, 16\)"):
        ConvEncoder((3, 32, 32), channels=(8, 16))


@needs_frey
@pytest.mark.slow
def test_evaluate_of_an_8_bit_run_prints_bits_per_dim(tmp_path, capsys):
    out = tmp_path / "frey8"
    assert main(["train", "--config", "examples/configs/frey-8bit.toml", "--out", str(out),
                 "--set", "train.epochs=2", "--set", "train.batch_size=100"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--iw-samples", "20", "--test-size", "50"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "evaluation.json").read_text())
    D = 28 * 20
    for name, v in result["estimators"].items():
        bits = result["bits_per_dim"][name]
        assert bits["mean"] == pytest.approx(-v["mean"] / (D * math.log(2)), rel=1e-12)
        assert bits["se"] == pytest.approx(v["se"] / (D * math.log(2)), rel=1e-12)
        assert f"{bits['mean']:.4f} ± {bits['se']:.4f} bits/dim" in printed
    assert 0 < result["bits_per_dim"]["iwae_bound(k=20)"]["mean"] < 8       # better than 256 equal levels (7.4 here)


@pytest.mark.parametrize("name, shape", [("cifar10", (3, 32, 32)), ("mnist-8bit", (28, 28)), ("frey-8bit", (28, 20))])
def test_the_8_bit_example_configs_load_and_build_for_their_data_shape(name, shape):
    """The shipped configs (CIFAR-10's without its files: the shape it will read, 3×32×32)."""
    from pyrovae.app import config, run

    cfg = config.load(f"examples/configs/{name}.toml")
    assert cfg["data"]["binarize"] == "none" and cfg["model"]["likelihood"] == "discretized-logistic"
    vae = run.build_model(cfg, shape)
    assert vae.likelihood.eight_bit and vae.input_shape == shape
    x = torch.randint(0, 256, (2,) + shape) / 255.0
    guide, model = traces(vae, x)
    model.compute_log_prob()
    assert torch.isfinite(model.nodes["x"]["log_prob"]).all()
