"""Exact-evidence experiments: pyrovae's estimators against log p(x) known in closed form."""
import json
import math
import re

import pytest

from pyrovae.app import plots
from pyrovae.lab import evidence
from pyrovae.app.cli import main

from conftest import png_pixels


@pytest.mark.slow
def test_ppca_vae_reaches_tipping_bishop_and_iwae_closes_the_gap():
    r = evidence.ppca_experiment(epochs=30, iw_samples=500, test_size=500)
    ml, elbo, iwae = r["gap_ml_minus_vae_log_px"], r["gap_vae_log_px_minus_elbo"], r["gap_vae_log_px_minus_iwae"]
    assert abs(ml["mean"]) < 0.02, r                              # trained by SVI to the ML solution
    assert elbo["mean"] > -4 * elbo["se"] and elbo["mean"] < 0.05  # a lower bound, and a tight one
    assert iwae["mean"] > -4 * iwae["se"]                          # still a lower bound
    assert iwae["mean"] < elbo["mean"] - 4 * (elbo["se"] ** 2 + iwae["se"] ** 2) ** 0.5  # and tighter


def test_toy_model_gap_closes_as_k_grows(tmp_path):
    r = evidence.toy_experiment(epochs=10, ks=(1, 10, 100, 1000), test_size=500)
    gaps = r["iwae_gap"]
    assert r["elbo_gap"]["mean"] > 4 * r["elbo_gap"]["se"]        # the ELBO is strictly below log p(x)
    assert gaps["1000"]["mean"] < 0.005
    elbo = r["elbo_gap"]                                           # 100 particles: a precise reference
    assert gaps["1000"]["mean"] < elbo["mean"] - 4 * (elbo["se"] ** 2 + gaps["1000"]["se"] ** 2) ** 0.5
    assert all(g["mean"] > -4 * g["se"] for g in gaps.values())  # never above log p(x) beyond noise
    assert plots.plot_toy_gap(r, tmp_path / "gap.png").stat().st_size > 10000
    png_pixels(tmp_path / "gap.png")


@pytest.mark.slow
def test_exact_command(tmp_path, capsys):
    assert main(["exact", "--out", str(tmp_path), "--epochs", "6", "--iw-samples", "100"]) == 0
    out = capsys.readouterr().out
    assert "Tipping & Bishop ML log-likelihood" in out and "log p(x) − IWAE, k = 5000" in out
    saved = json.loads((tmp_path / "exact.json").read_text())
    assert set(saved) == {"ppca", "toy"}
    ppca, toy = saved["ppca"], saved["toy"]
    assert ppca["epochs"] == 6 and ppca["iw_samples"] == 100 and list(toy["iwae_gap"]) == ["1", "10", "100", "1000", "5000"]
    # every printed "mean ± se" is the saved value, to the 4 decimals printed
    printed = [(float(m), float(se)) for m, se in re.findall(r"([+-]\d+\.\d{4}) ± (\d+\.\d{4})", out)]
    values = [ppca[k] for k in ("tipping_bishop_ml", "vae_exact_log_px", "vae_elbo", "vae_iwae",
                                "gap_ml_minus_vae_log_px", "gap_vae_log_px_minus_elbo", "gap_vae_log_px_minus_iwae")]
    values += [toy["log_px"], toy["elbo_gap"], *toy["iwae_gap"].values()]
    assert printed == [(round(v["mean"], 4), round(v["se"], 4)) for v in values], out
    assert all(math.isfinite(v["mean"]) and v["se"] > 0 for v in values)
    # per-datapoint log-densities of 5-D PPCA data (about −7 nats); the ELBO and IWAE are lower bounds
    # on the VAE's exact log p(x) (within 4 SE), the paired gaps the differences of the rows
    assert -20 < ppca["vae_exact_log_px"]["mean"] < 0 and -20 < ppca["tipping_bishop_ml"]["mean"] < 0
    for gap in ("gap_vae_log_px_minus_elbo", "gap_vae_log_px_minus_iwae"):
        assert ppca[gap]["mean"] > -4 * ppca[gap]["se"], (gap, ppca[gap])
    assert ppca["gap_vae_log_px_minus_elbo"]["mean"] == pytest.approx(
        ppca["vae_exact_log_px"]["mean"] - ppca["vae_elbo"]["mean"], abs=1e-9)
    assert all(g["mean"] > -4 * g["se"] for g in toy["iwae_gap"].values())
    assert toy["elbo_gap"]["mean"] > 4 * toy["elbo_gap"]["se"]  # the toy's guide is not its posterior
    height, width = png_pixels(tmp_path / "toy_gap.png").shape[:2]
    assert 300 < height < width < 2000  # one landscape panel
