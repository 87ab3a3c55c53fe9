"""Exact-evidence experiments: pyrovae's estimators against log p(x) known in closed form."""
import json

from pyrovae.app import plots
from pyrovae.lab import evidence
from pyrovae.app.cli import main


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


def test_exact_command(tmp_path, capsys):
    assert main(["exact", "--out", str(tmp_path), "--epochs", "6", "--iw-samples", "100"]) == 0
    out = capsys.readouterr().out
    assert "Tipping & Bishop ML log-likelihood" in out and "log p(x) − IWAE, k = 5000" in out
    saved = json.loads((tmp_path / "exact.json").read_text())
    assert set(saved) == {"ppca", "toy"} and (tmp_path / "toy_gap.png").exists()
