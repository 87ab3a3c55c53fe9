"""pyrovae.plots on real, briefly trained VAEs: on random binary images, and on real MNIST (marked mnist)."""
import csv
import math

import matplotlib.image
import numpy as np
import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from conftest import MNIST_MARKS
from pyrovae import VAE
from pyrovae.app import plots
from pyrovae.data import load_dataset

ALL_IMAGE_FILES = {"curves.png", "reconstructions.png", "samples.png", "manifold.png",
                   "latent.png", "interpolation.png"}


def metrics_rows(n=4):
    """Rows as metrics.csv holds them; the test ELBO is missing in the first epochs."""
    return [dict(epoch=e, train_elbo=-200.0 + 10 * e, test_elbo=None if e < 3 else -205.0 + 10 * e,
                 reconstruction=-180.0 + 9 * e, kl=20.0 - e, seconds=1.5) for e in range(1, n + 1)]


@pytest.fixture(scope="module", params=["synthetic", pytest.param("mnist", marks=MNIST_MARKS)])
def data(request):
    """(x [300, 28, 28] in [0, 1], labels [300]): random binary images, and the first 300 MNIST test images
    (the tests that use it run on each; on MNIST they are marked mnist and skip without the files)."""
    if request.param == "mnist":
        split = load_dataset("mnist", "test", subset=300)
        return split.x, split.labels
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((300, 28, 28), 0.2), generator=g)
    return x, torch.randint(10, (300,), generator=g)


def trained(vae, x, steps=100):
    """``vae`` after ``steps`` SVI steps of Trace_ELBO on batches of 64 of x."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
    for step in range(steps):
        svi.step(x[(step * 64 + torch.arange(64)) % len(x)])
    pyro.clear_param_store()
    return vae


@pytest.fixture(scope="module")
def vae2(data):
    return trained(VAE((28, 28), 2, hidden=(32,)), data[0])


@pytest.fixture(scope="module")
def vae5(data):
    return trained(VAE((28, 28), 5, hidden=(32,)), data[0], steps=30)


def assert_png(path, min_width=200, min_height=100):
    """``path`` is a readable PNG of a sensible size that is not blank."""
    assert path.exists(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    height, width = pixels.shape[:2]
    assert min_width <= width <= 4000 and min_height <= height <= 4000, pixels.shape
    assert pixels[..., :3].std() > 0


# ----------------------------------------------------------------------------- arrays


@pytest.mark.parametrize("input_shape, expected", [
    ((28, 28), (28, 28)), ((28, 20), (28, 20)), ((1, 28, 28), (28, 28)), ((784,), (28, 28)),
    ((5,), None), ((1,), None), ((3, 28, 28), None),
])
def test_as_images_shapes(input_shape, expected):
    x = torch.rand(4, *input_shape)
    images = plots.as_images(x, input_shape)
    if expected is None:
        assert images is None
    else:
        assert images.shape == (4, *expected)
        np.testing.assert_array_equal(images.reshape(4, -1), x.reshape(4, -1).numpy())


def test_image_grid_places_each_image_at_its_offset():
    h, w, ncol = 2, 3, 3
    images = np.arange(5 * h * w, dtype=np.float32).reshape(5, h, w) / 100
    grid = plots.image_grid(images, ncol)
    expected = np.ones((2 * h + 3, ncol * w + ncol + 1), dtype=np.float32)  # 1-pixel lines of 1.0, also around
    for k, (top, left) in enumerate([(1, 1), (1, 5), (1, 9), (4, 1), (4, 5)]):
        expected[top:top + h, left:left + w] = images[k]
    np.testing.assert_array_equal(grid, expected)


def test_image_grid_caps_ncol_at_the_number_of_images():
    assert plots.image_grid(np.zeros((2, 4, 4)), 8).shape == (6, 11)


# ----------------------------------------------------------------------------- figures


def test_plot_curves_from_rows_with_missing_test_elbo(tmp_path):
    rows = metrics_rows()
    del rows[0]["test_elbo"]
    rows[3]["test_elbo"] = float("nan")
    assert_png(plots.plot_curves(rows, tmp_path / "curves.png"))


def test_plot_curves_from_csv_path(tmp_path):
    path = tmp_path / "metrics.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(metrics_rows()[0]))
        writer.writeheader()
        writer.writerows(metrics_rows())  # None is written as an empty field
    assert_png(plots.plot_curves(path, tmp_path / "curves.png"))
    assert_png(plots.plot_curves(str(path), tmp_path / "curves2.png"))


def test_plot_samples_is_seeded_and_leaves_the_global_rng_alone(vae2, tmp_path):
    state = torch.get_rng_state()
    first = matplotlib.image.imread(plots.plot_samples(vae2, tmp_path / "a.png", seed=3))
    again = matplotlib.image.imread(plots.plot_samples(vae2, tmp_path / "b.png", seed=3))
    other = matplotlib.image.imread(plots.plot_samples(vae2, tmp_path / "c.png", seed=4))
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_manifold_grid_uses_the_prior_quantiles(vae2):
    n = 7
    grid = plots.manifold_grid(vae2, n)
    assert grid.shape == (n, n, 2)
    normal = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
    # z1 grows along a row (left to right), z2 up the columns (bottom to top)
    torch.testing.assert_close(grid[0, :, 0], normal, atol=0.05, rtol=0)
    torch.testing.assert_close(grid[:, 0, 1].flip(0), normal, atol=0.05, rtol=0)
    assert torch.equal(grid[..., 0], grid[:1, :, 0].expand(n, n))
    assert torch.equal(grid[..., 1], grid[:, :1, 1].expand(n, n))


def test_plot_manifold_rejects_latent_dim_3(tmp_path):
    with pytest.raises(ValueError, match="latent_dim"):
        plots.plot_manifold(VAE((28, 28), 3, hidden=(8,)), tmp_path / "manifold.png")
    assert not (tmp_path / "manifold.png").exists()


def test_image_plots_refuse_non_image_data(tmp_path):
    with pytest.raises(ValueError, match="not images"):
        vae = VAE(5, 2, likelihood="gaussian", hidden=(8,))
        plots.plot_reconstructions(vae, torch.randn(4, 5), tmp_path / "r.png")


def test_latent_scatter_pca_for_latent_dim_5(vae5, data, tmp_path):
    x, labels = data
    assert_png(plots.plot_latent_scatter(vae5, x, labels, tmp_path / "latent.png"))
    assert_png(plots.plot_latent_scatter(vae5, x, None, tmp_path / "latent-unlabelled.png"))


def test_interpolation_and_reconstructions(vae2, data, tmp_path):
    x, _ = data
    assert_png(plots.plot_interpolation(vae2, x[0], x[1], tmp_path / "i.png", steps=5))
    assert_png(plots.plot_reconstructions(vae2, x, tmp_path / "r.png", n=4), min_width=150, min_height=60)


# ----------------------------------------------------------------------------- plot_all


def written(paths, run_dir):
    for path in paths:
        assert path.parent == run_dir
        assert_png(path)
    return {path.name for path in paths}


def test_plot_all_latent_dim_2(vae2, data, tmp_path):
    x, labels = data
    paths = plots.plot_all(vae2, tmp_path, x, labels, metrics_rows())
    assert written(paths, tmp_path) == ALL_IMAGE_FILES
    assert {p.name for p in tmp_path.iterdir()} == ALL_IMAGE_FILES


def test_plot_all_latent_dim_5_has_no_manifold(vae5, data, tmp_path):
    x, labels = data
    paths = plots.plot_all(vae5, tmp_path, x, labels, metrics_rows())
    assert written(paths, tmp_path) == ALL_IMAGE_FILES - {"manifold.png"}


def test_plot_all_non_image_data(tmp_path):
    x = torch.randn(200, 5)
    vae = trained(VAE(5, 2, likelihood="gaussian", hidden=(16,)), x, steps=20)
    paths = plots.plot_all(vae, tmp_path, x, None, metrics_rows())
    assert written(paths, tmp_path) == {"curves.png", "latent.png"}
    assert math.isfinite(vae.encode(x)["loc"].sum().item())
