"""Figures of a trained VAE, written as PNG files (matplotlib's Agg canvas, no pyplot state).

=========================  ====================================================================
``curves.png``             train/test ELBO, and E_q[log p(x|z)] and KL(q(z|x) ‖ p(z)), per epoch
``reconstructions.png``    originals x (top row) above E[x | z = μ_φ(x)] (bottom row)
``samples.png``            8×8 decoder means E[x|z] of z ~ p(z)
``manifold.png``           E[x|z] over a grid of the prior's quantiles (latent_dim == 2 only;
                           Kingma & Welling 2014, Fig. 4)
``latent.png``             the posterior means μ_φ(x) coloured by label (first two principal
                           components when latent_dim > 2)
``interpolation.png``      E[x|z] along the line from μ_φ(x_a) to μ_φ(x_b), originals at the ends
=========================  ====================================================================

The image figures need image data (:func:`as_images`); :func:`plot_all` skips them otherwise.
Every ``plot_*`` function returns the :class:`~pathlib.Path` it wrote.
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torchvision.utils import make_grid

from ..errors import InputError
from ..files import atomic_write

DPI = 120
MANIFOLD_LEVELS = (0.05, 0.95)  # the quantile range of the manifold grid, per latent axis
PRIOR_DRAWS = 20000  # prior samples the manifold's quantiles are estimated from
MIN_FLAT_SIDE = 8  # a flat vector of D = s² values is shown as an s×s image only for s >= this
PathLike = Union[str, os.PathLike]


# ----------------------------------------------------------------------------- arrays


def _image_shape(input_shape: Sequence[int]) -> Optional[tuple]:
    """(H, W) of one example of ``input_shape`` shown as a grey image, or None if it is no image."""
    shape = tuple(input_shape)
    if len(shape) == 2:
        return shape
    if len(shape) == 3 and shape[0] == 1:
        return shape[1:]
    side = math.isqrt(shape[0]) if len(shape) == 1 else 0
    return (side, side) if side >= MIN_FLAT_SIDE and side * side == shape[0] else None


def as_images(x, input_shape: Sequence[int]) -> Optional[np.ndarray]:
    """x ``[N, *input_shape]`` (tensor or array) → float ``[N, H, W]``, or None when not images.

    ``(H, W)`` (e.g. MNIST's (28, 28), Frey Face's (28, 20)) is kept, ``(1, H, W)`` is squeezed
    and a flat ``(D,)`` with D = s², s >= ``MIN_FLAT_SIDE``, is reshaped to s×s; anything else
    (e.g. ``(5,)``, ``(3, H, W)``) gives None.
    """
    hw = _image_shape(input_shape)
    if hw is None:
        return None
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return array.reshape(-1, *hw).astype(np.float32)


def image_grid(images: np.ndarray, ncol: int, pad_value: float = 1.0) -> np.ndarray:
    """Tile ``images`` [N, H, W] row by row with ``torchvision.utils.make_grid``: ``ncol`` per row
    (capped at N), 1-pixel lines of ``pad_value`` around and between them, which also fill the
    empty cells of the last row. Image k sits at row ``1 + (k // ncol)(H + 1)``, column
    ``1 + (k % ncol)(W + 1)``; the grid is ``[rows(H + 1) + 1, ncol(W + 1) + 1]``."""
    tensor = torch.as_tensor(np.asarray(images, dtype=np.float32)).unsqueeze(1)  # [N, 1, H, W]
    return make_grid(tensor, nrow=max(1, ncol), padding=1, pad_value=pad_value)[0].numpy()


# ----------------------------------------------------------------------------- figures


def _figure(width: float, height: float, ncols: int = 1):
    """A new Figure (tight layout) of ``width``×``height`` inches and its ``ncols`` axes."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="tight")
    axes = fig.subplots(1, ncols)
    return fig, axes


def save_figure(fig: Figure, path: PathLike) -> Path:
    """Write ``fig`` as a PNG to ``path`` (creating its folder, atomically) and return the path."""
    with atomic_write(path, "wb") as f:
        fig.savefig(f, dpi=DPI, format="png")
    return Path(path)


def _save_image_grid(images: np.ndarray, ncol: int, path: PathLike, title: str,
                     xlabel: str = "", ylabel: str = "") -> Path:
    """Draw ``images`` [N, H, W] (intensities, clipped to [0, 1]) as a grey grid and save it."""
    grid = image_grid(np.clip(images, 0.0, 1.0), ncol)
    scale = 8.0 / max(grid.shape)
    fig, ax = _figure(max(3.0, grid.shape[1] * scale), max(1.5, grid.shape[0] * scale + 0.6))
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return save_figure(fig, path)


def _images_or_raise(vae, x) -> np.ndarray:
    images = as_images(x, vae.input_shape)
    if images is None:
        raise InputError(f"the data of input_shape {tuple(vae.input_shape)} are not images")
    return images


# ----------------------------------------------------------------------------- torch helpers


def _device(vae) -> torch.device:
    param = next(vae.parameters(), None)
    return torch.device("cpu") if param is None else param.device


def _tensor(vae, x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32, device=_device(vae))


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed torch's generator of ``device`` inside; the global RNG state is restored afterwards."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)
        yield


# ----------------------------------------------------------------------------- training curves


def _read_csv(path: PathLike) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _column(rows: list, key: str) -> np.ndarray:
    """``rows[i][key]`` as floats; missing, None and empty entries are NaN."""
    values = [row.get(key) for row in rows]
    return np.array([np.nan if v in (None, "") else float(v) for v in values], dtype=float)


def _plot_lines(ax, epoch: np.ndarray, rows: list, series: Iterable, ylabel: str, title: str):
    for key, label in series:
        values = _column(rows, key)
        if np.isfinite(values).any():
            finite = np.isfinite(values)
            ax.plot(epoch[finite], values[finite], marker="o", markersize=3, label=label)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()


def plot_curves(metrics: Union[Sequence[dict], PathLike], path: PathLike) -> Path:
    """ELBO per epoch (left) and its two terms, reconstruction (middle) and KL (right), each on its own scale.

    ``metrics``: the rows of ``metrics.csv`` as dicts (keys ``epoch``, ``train_elbo``,
    ``test_elbo``, ``reconstruction``, ``kl``; any may be missing, None or NaN) or the CSV's path.
    """
    rows = _read_csv(metrics) if isinstance(metrics, (str, os.PathLike)) else list(metrics)
    epoch = _column(rows, "epoch")
    if not np.isfinite(epoch).all():
        epoch = np.arange(1, len(rows) + 1, dtype=float)
    fig, (left, middle, right) = _figure(13.5, 4.0, ncols=3)
    _plot_lines(left, epoch, rows, [("train_elbo", "train"), ("test_elbo", "test")],
                "ELBO (nats per datapoint)", "ELBO = reconstruction − KL")
    _plot_lines(middle, epoch, rows, [("reconstruction", "test")], "nats per datapoint",
                "reconstruction E_q[log p(x|z)]")
    _plot_lines(right, epoch, rows, [("kl", "test")], "nats per datapoint", "KL(q(z|x) ‖ p(z))")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- image figures


def _arguments(vae, x: torch.Tensor, labels) -> tuple:
    """The family's arguments (``vae.arguments``: x, and a conditional VAE's label) for x and the
    first ``len(x)`` labels (None: the data have none)."""
    return vae.arguments(x, None if labels is None else torch.as_tensor(labels[:len(x)], device=_device(vae)))


@torch.no_grad()
def plot_reconstructions(vae, x, path: PathLike, n: int = 10, labels=None) -> Path:
    """The first ``n`` of x ``[N, *input_shape]`` (top row) above their reconstructions (bottom);
    a conditional VAE reconstructs each with its label (``labels`` [N])."""
    x = _tensor(vae, x[:n])
    images = _images_or_raise(vae, torch.cat([x, vae.reconstruct(*_arguments(vae, x, labels))]))
    return _save_image_grid(images, len(x), path,
                            "originals x (top), reconstructions E[x | z = μ(x)] (bottom)")


@torch.no_grad()
def plot_samples(vae, path: PathLike, n: int = 64, seed: int = 0, label: Optional[int] = None) -> Path:
    """An 8-column grid of ``n`` decoder means E[x|z], z ~ p(z), drawn with torch seeded by ``seed``
    (the global RNG state is left as it was). A model with labels (conditional VAE, M2) draws
    ``label``'s class, or, with none, a row of 8 per class."""
    with _seeded(seed, _device(vae)):
        if not vae.labelled:
            images, title = vae.sample(n), f"E[x|z] for {n} draws z ~ p(z)"
        elif label is not None:
            images, title = vae.sample(n, label=label), f"E[x|z, y = {label}] for {n} draws z ~ p(z)"
        else:
            images = torch.cat([vae.sample(8, label=k) for k in range(vae.num_classes)])
            title = "E[x|z, y], z ~ p(z): a row per class y = 0, 1, …"
    return _save_image_grid(_images_or_raise(vae, images), 8, path, title)


@torch.no_grad()
def manifold_grid(vae, n: int = 20, seed: int = 0) -> torch.Tensor:
    """The z grid of :func:`plot_manifold`, ``[n, n, 2]``, laid out as the picture.

    ``grid[r, c] = (q₁[c], q₂[n-1-r])``: z₁ grows to the right, z₂ upwards, where q_l are the
    quantiles at ``linspace(0.05, 0.95, n)`` of ``PRIOR_DRAWS`` samples of the prior's axis l
    (seeded by ``seed``; for N(0, I) these are the normal quantiles Φ⁻¹).
    """
    if vae.latent_dim != 2:
        raise InputError(f"the manifold needs latent_dim == 2, got latent_dim = {vae.latent_dim}")
    device = _device(vae)
    with _seeded(seed, device):
        draws = vae.prior().sample((PRIOR_DRAWS,))  # [PRIOR_DRAWS, 2]
    levels = torch.linspace(*MANIFOLD_LEVELS, n, device=device, dtype=draws.dtype)
    q = torch.quantile(draws, levels, dim=0)  # [n, 2]
    z1, z2 = torch.meshgrid(q[:, 0], q[:, 1].flip(0), indexing="xy")
    return torch.stack([z1, z2], dim=-1)


@torch.no_grad()
def plot_manifold(vae, path: PathLike, n: int = 20) -> Path:
    """E[x|z] over :func:`manifold_grid` (n×n images); raises ValueError unless latent_dim == 2."""
    z = manifold_grid(vae, n)
    images = _images_or_raise(vae, vae.decode_mean(z.reshape(-1, 2)))
    span = f"prior quantiles {MANIFOLD_LEVELS[0]:g} → {MANIFOLD_LEVELS[1]:g}"
    return _save_image_grid(images, n, path, "E[x|z] over the latent space",
                            xlabel=f"z₁ ({span})", ylabel=f"z₂ ({span})")


@torch.no_grad()
def plot_interpolation(vae, x_a, x_b, path: PathLike, steps: int = 10) -> Path:
    """E[x|z] at ``steps`` points z = (1-t) μ(x_a) + t μ(x_b), t ∈ [0, 1], between x_a and x_b
    (each ``input_shape``), drawn as one row of ``steps + 2`` images."""
    x = _tensor(vae, torch.stack([torch.as_tensor(x_a), torch.as_tensor(x_b)]))
    loc = vae.encode(x)["loc"]  # [2, L]
    t = torch.linspace(0.0, 1.0, steps, device=loc.device, dtype=loc.dtype).unsqueeze(-1)
    between = vae.decode_mean((1 - t) * loc[0] + t * loc[1])
    images = _images_or_raise(vae, torch.cat([x[:1], between, x[1:]]))
    return _save_image_grid(images, steps + 2, path,
                            "x_a, E[x|z] along z = (1−t) μ(x_a) + t μ(x_b), x_b")


# ----------------------------------------------------------------------------- latent space


def _two_dims(loc: torch.Tensor):
    """Posterior means ``[N, L]`` → (points ``[N, 2]`` as numpy, x label, y label)."""
    L = loc.shape[-1]
    if L == 1:
        return torch.cat([loc, torch.zeros_like(loc)], 1).numpy(), "z₁ (posterior mean)", "(latent_dim = 1)"
    if L == 2:
        return loc.numpy(), "z₁ (posterior mean)", "z₂ (posterior mean)"
    centred = loc - loc.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    share = (s**2 / (s**2).sum()).tolist()
    labels = [f"PC {k + 1} of the posterior means ({100 * share[k]:.0f}% of variance)" for k in (0, 1)]
    return (centred @ vh[:2].T).numpy(), *labels


@torch.no_grad()
def plot_latent_scatter(vae, x, labels, path: PathLike) -> Path:
    """The posterior means μ_φ(x) of x ``[N, *input_shape]`` (of the top layer of a hierarchical
    VAE), coloured by ``labels`` [N] (tab10) or in one colour when ``labels`` is None; the first
    two principal components when L > 2."""
    loc = vae.encode(*_arguments(vae, _tensor(vae, x), labels))["loc"].cpu()
    points, xlabel, ylabel = _two_dims(loc)
    fig, ax = _figure(6.5, 5.5)
    title = f"posterior means of {len(points)} inputs (latent_dim = {vae.latent_dim})"
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.7)
        return save_figure(fig, path)
    labels = torch.as_tensor(labels).cpu().numpy()
    k = max(10, int(labels.max()) + 1)  # colours for the labels 0..k-1
    dots = ax.scatter(points[:, 0], points[:, 1], c=labels, s=6, alpha=0.8,
                      cmap="tab10" if k == 10 else "viridis", vmin=-0.5, vmax=k - 0.5)
    fig.colorbar(dots, ax=ax, label="label", ticks=range(k) if k == 10 else None)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- everything


def _other_example(labels, x) -> int:
    """The index of an example to interpolate x[0] to: the first with another label, else 1."""
    if labels is not None:
        differs = (torch.as_tensor(labels) != torch.as_tensor(labels)[0]).nonzero()
        if len(differs):
            return int(differs[0])
    return min(1, len(x) - 1)


def plot_all(vae, run_dir: PathLike, x, labels=None, metrics=None) -> list:
    """Write every figure that applies into ``run_dir``; return the paths written, in order.

    x ``[N, *input_shape]``, labels ``[N]`` or None, metrics as for :func:`plot_curves` (no
    ``curves.png`` when None or empty). The image figures are skipped when x are not images,
    ``manifold.png`` unless latent_dim == 2; a model with labels (conditional VAE, M2) has a row of
    samples per class and no manifold or interpolation (its decoder needs a label too).
    """
    run_dir = Path(run_dir)
    paths = []
    if metrics is not None and (not isinstance(metrics, Sequence) or len(metrics)):
        paths.append(plot_curves(metrics, run_dir / "curves.png"))
    images = _image_shape(vae.input_shape) is not None
    labelled = vae.labelled
    if images:
        paths.append(plot_reconstructions(vae, x, run_dir / "reconstructions.png", labels=labels))
        paths.append(plot_samples(vae, run_dir / "samples.png"))
        if vae.latent_dim == 2 and not labelled:
            paths.append(plot_manifold(vae, run_dir / "manifold.png"))
    paths.append(plot_latent_scatter(vae, x, labels, run_dir / "latent.png"))
    if images and not labelled:
        other = _other_example(labels, x)
        paths.append(plot_interpolation(vae, x[0], x[other], run_dir / "interpolation.png"))
    return paths


# ----------------------------------------------------------------------------- the lab's results


def plot_comparison(result: dict, path) -> str:
    """A PNG: every estimator's mean ± 2 SE, and the IWAE bound against k (log axis) over the ELBO."""
    rows = [r for r in result["rows"] if r["available"]]
    units = result["units"]
    fig, (left, right) = _figure(12, 4.8, ncols=2)
    pos = list(range(len(rows)))
    left.errorbar(pos, [r["mean"] for r in rows], yerr=[2 * (r["se"] or 0) for r in rows],
                  fmt="o", capsize=4)
    left.set_xticks(pos, [r["label"] for r in rows], rotation=35, ha="right", fontsize=8)
    left.set_ylabel(units)
    left.set_title("mean ± 2 SE (over datapoints)")
    left.grid(alpha=0.3)

    iwae = sorted((r for r in rows if r["name"] == "iwae_bound"), key=lambda r: r["parameter"])
    elbo = next((r for r in rows if r["name"] == "analytic_elbo"), None)
    gain_se = {d["b"]: d["se"] or 0 for d in result["differences"] if d["a"] == "analytic_elbo r=1"}
    if iwae:
        k = [r["parameter"] for r in iwae]
        mean = [r["mean"] for r in iwae]
        band = [2 * gain_se.get(r["label"], 0) for r in iwae]
        right.plot(k, mean, "o-", label="IWAE bound")
        right.fill_between(k, [m - s for m, s in zip(mean, band)], [m + s for m, s in zip(mean, band)],
                           alpha=0.25, label="± 2 SE of its gain over the ELBO (paired)")
        right.set_xscale("log")
    else:
        right.text(0.5, 0.5, "no IWAE rows", ha="center", va="center", transform=right.transAxes)
    if elbo:
        right.axhline(elbo["mean"], color="k", linestyle="--", label="ELBO (analytic KL)")
    right.set_xlabel("k (importance samples)")
    right.set_ylabel(units)
    right.set_title("IWAE bound against k")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(f"ELBO estimators on {result['n']} datapoints")
    return save_figure(fig, path)


def plot_toy_gap(result: dict, path) -> Path:
    """log p(x) − IWAE_k against k (log axes), with the ELBO's gap as a reference line."""
    fig, ax = _figure(6, 4)
    ks = [int(k) for k in result["iwae_gap"]]
    gaps = [result["iwae_gap"][str(k)] for k in ks]
    ax.errorbar(ks, [g["mean"] for g in gaps], yerr=[2 * g["se"] for g in gaps], marker="o", capsize=3,
                label="log p(x) − IWAE_k (± 2 SE)")
    ax.axhline(result["elbo_gap"]["mean"], color="grey", linestyle="--", label="log p(x) − ELBO")
    ax.set(xscale="log", xlabel="k (importance samples)", ylabel="gap (nats per datapoint)",
           title="The notes' toy model: the bound closes as k grows")
    ax.legend()
    return save_figure(fig, path)
