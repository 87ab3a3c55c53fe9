"""The example scripts run end to end on real data (small budgets) and print what they promise."""
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_frey, needs_mnist, png_pixels

pytestmark = pytest.mark.slow  # each trains a model in a fresh Python: 5 to 15 seconds

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"(-?\d+\.\d+)"


def run_example(script, *args):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@needs_mnist
def test_hand_written_pair_prints_every_estimator_in_order():
    out = run_example("hand_written_pair.py", "--epochs", "1", "--subset", "2000", "--iw-samples", "100")
    values = {name: float(v) for name, v in re.findall(r"^\s+(\w+) \([rk]=\d+\)\s+" + NUMBER, out, re.M)}
    assert set(values) == {"mc_elbo", "analytic_elbo", "closed_form_elbo", "iwae_bound"}, out
    assert all(-400 < v < 0 for v in values.values()), out          # log-probabilities of binary images
    # the three ELBOs estimate the same number (r = 10 each, 500 images); IWAE(100) lies above them
    assert max(values["mc_elbo"], values["analytic_elbo"], values["closed_form_elbo"]) - \
        min(values["mc_elbo"], values["analytic_elbo"], values["closed_form_elbo"]) < 1.0, out
    assert values["iwae_bound"] > values["analytic_elbo"], out
    assert "analytic sites: ['z']" in out


@needs_mnist
def test_swap_components_trains_every_variant():
    out = run_example("swap_components.py", "--epochs", "1", "--subset", "1000")
    rows = re.findall(r"^  (.+?)\s+" + NUMBER + r"\s+p\(z\) = ", out, re.M)
    assert [name for name, _ in rows] == ["notes' VAE", "mixture prior, K=10", "VampPrior, K=50",
                                          "Student-t prior (object)", "continuous Bernoulli", "IAF guide, 2 flows"], out
    # log-probabilities of binary 28×28 images, far above coin flips (784 log 2 = 543 nats)
    assert all(-400 < float(v) < 0 for name, v in rows if name != "continuous Bernoulli"), out


@needs_frey
def test_frey_face_example_writes_its_plots(tmp_path):
    out = run_example("frey_face.py", "--epochs", "2", "--out", str(tmp_path))
    found = re.search(r"test ELBO (-?\d+\.\d) nats per face after 2 epochs", out)
    assert found, out
    # a density of 28×20 intensities (measured 504 after 2 epochs): positive once the decoder fits the
    # mean face, and below 560 (−log 0.02 − ½ log 2π), the bound that σ_x ≥ 0.02 sets
    assert 0 < float(found.group(1)) < 560 * (-math.log(0.02) - 0.5 * math.log(2 * math.pi)), out
    figures = {"curves.png", "reconstructions.png", "samples.png", "manifold.png", "latent.png",
               "interpolation.png"}
    printed = [Path(line) for line in out.splitlines() if line.endswith(".png")]
    assert sorted(printed) == sorted(tmp_path / name for name in figures), out
    assert {p.name for p in tmp_path.glob("*.png")} == figures
    for name in figures:
        png_pixels(tmp_path / name)


@needs_mnist
def test_semi_supervised_example_trains_m2_and_reports_its_accuracy():
    out = run_example("semi_supervised.py", "--epochs", "2", "--subset", "1000")
    assert "100 labeled, 900 unlabeled MNIST images; α = 0.9, w = 9" in out, out  # α = 0.1·N_u/N_l
    rows = re.findall(r"^epoch (\d+)\s+ELBO\s+" + NUMBER + r"\s+test accuracy (\d\.\d+)", out, re.M)
    assert [int(epoch) for epoch, _, _ in rows] == [1, 2], out
    assert all(-400 < float(elbo) < 0 for _, elbo, _ in rows), out
    # 10 classes: chance is 0.1 on the 10,000 test images (SE 0.003); after two epochs (measured 0.18)
    # the classifier is ten SEs above it
    assert float(rows[-1][2]) > 0.13, out
