"""Every family through every subcommand that takes a run dir, on real MNIST.

One run per family (a module fixture: 300 training images, 1 epoch, small networks) goes through
train → evaluate → compare → sample (with and without ``--label``) → reconstruct → plot → resume,
and the API's estimators on its pair. The families: the built-in ``vae``, ``cvae``, ``m2``,
``2layer``, the VampPrior VAE, and ``linear``, the family a user registers in
examples/own_family.py (docs/families.md). What each step must leave: its files, its JSON keys,
finite numbers; a step a family cannot do is refused in one line (exit status 2), or, for a closed
form it does not have, a row or note that says why.
"""
import csv
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

from pyrovae.app import run as runmod
from pyrovae.app.cli import main
from pyrovae.inference.estimators import analytic_elbo, iwae_bound, mc_elbo

from conftest import MNIST_MARKS, png_pixels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import own_family  # noqa: E402  registers model.family = "linear"

pytestmark = [pytest.mark.slow, *MNIST_MARKS]

SMALL = ["--set", "data.subset=300", "--set", "data.test_subset=60", "--set", "train.epochs=1",
         "--set", "train.batch_size=50"]
#: family → (config, its settings made small)
FAMILIES = {
    "vae": ("mnist.toml", ["model.hidden=[64]", "model.latent_dim=4"]),
    "cvae": ("mnist-cvae.toml", ["model.hidden=[64]", "model.latent_dim=4"]),
    "m2": ("mnist-m2.toml", ["model.hidden=[64]", "model.latent_dim=4", "data.labeled=20"]),
    "2layer": ("mnist-2layer.toml", ["model.family_options={latent_dims = [8, 4], hidden = [[32], [16]]}"]),
    "vamp": ("mnist_vamp.toml", ["model.hidden=[64]", "model.latent_dim=4", "model.prior_options={components = 10}"]),
    "linear": ("mnist.toml", ["model.family=linear", "model.latent_dim=2", "model.hidden=[]"]),
}
LABELLED = {"cvae", "m2"}
#: the only family whose closed form (the notes' hand-written loss) applies: N(0, I), diagonal, Bernoulli
CLOSED_FORM = {"vae"}


def cli(*args):
    assert main([str(a) for a in args]) == 0


def refused(args, capsys) -> str:
    """The CLI refuses in one line (exit 2, no traceback): the line."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("pyrovae: error: ") and err.count("\n") == 1, err
    return err


def finite(*values):
    return all(isinstance(v, float) and math.isfinite(v) for v in values)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_run(request, tmp_path_factory):
    """(family name, run dir) trained once per family for every test of this module."""
    name = request.param
    config, settings = FAMILIES[name]
    out = tmp_path_factory.mktemp("matrix") / name
    sets = [a for s in settings for a in ("--set", s)]
    cli("train", "--config", f"examples/configs/{config}", "--out", out, *SMALL, *sets)
    return name, out


def test_train_writes_the_run(family_run):
    name, run = family_run
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 1 and finite(*(float(v) for v in rows[0].values()))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 1 and finite(summary["final"]["test_elbo"]) and summary["final"]["test_elbo"] < 0
    figures = {"curves.png", "reconstructions.png", "samples.png", "latent.png"}
    if name not in LABELLED:
        figures |= {"interpolation.png"} | ({"manifold.png"} if name == "linear" else set())
    assert {p.name for p in run.glob("*.png")} == figures


def test_evaluate_scores_every_estimator(family_run, capsys):
    name, run = family_run
    capsys.readouterr()
    cli("evaluate", run, "--iw-samples", 10, "--test-size", 40, "--json")
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads((run / "evaluation.json").read_text())
    expected = {"mc_elbo", "analytic_elbo", "iwae_bound(k=10)"} | ({"closed_form_elbo"} if name in CLOSED_FORM else set())
    assert set(result["estimators"]) == expected
    for v in result["estimators"].values():
        assert finite(v["mean"], v["se"]) and v["mean"] < 0
    assert ("closed_form_elbo" in result) == (name not in CLOSED_FORM)  # the one line that says why not
    if name == "m2":
        assert 0 <= result["accuracy"]["mean"] <= 1
    else:
        assert "accuracy" not in result


def test_compare_runs_every_row_and_the_gradient_lab(family_run, capsys):
    name, run = family_run
    capsys.readouterr()
    cli("compare", run, "--test-size", 20, "--max-k", 10, "--gradient-draws", 3, "--json")
    result = json.loads(capsys.readouterr().out)
    assert (run / "compare.json").is_file()
    png_pixels(run / "compare.png")
    rows = {r["label"]: r for r in result["rows"]}
    assert rows["closed_form_elbo r=1"]["available"] == (name in CLOSED_FORM)
    for row in rows.values():
        assert finite(row["mean"], row["estimator_sd"]) if row["available"] else row["reason"]
    gradients = result["gradient_variance"]
    assert gradients["num_parameters"] > 0
    assert all(finite(e["total_variance"]) for e in gradients["estimators"].values())


def test_sample_with_and_without_a_label(family_run, capsys, tmp_path):
    name, run = family_run
    cli("sample", run, "--out", tmp_path / "all.png", "-n", 16)
    assert png_pixels(tmp_path / "all.png").size
    args = ["sample", run, "--label", 3, "--out", tmp_path / "three.png", "-n", 8]
    if name in LABELLED:
        cli(*args)
        assert png_pixels(tmp_path / "three.png").size
    else:
        assert "--label draws one class of a model with labels" in refused(args, capsys)


def test_reconstruct_and_plot(family_run, capsys, tmp_path):
    name, run = family_run
    cli("reconstruct", run, "--out", tmp_path / "r.png", "-n", 8)
    assert png_pixels(tmp_path / "r.png").size
    capsys.readouterr()
    cli("plot", run)
    written = [Path(line) for line in capsys.readouterr().out.split()]
    assert {p.name for p in written} == {p.name for p in run.glob("*.png")} - {"compare.png"}
    for path in written:
        png_pixels(path)


def test_resume_adds_an_epoch(family_run, tmp_path):
    name, run = family_run
    copy = shutil.copytree(run, tmp_path / "resumed")
    cli("train", "--out", copy, "--resume", "--set", "train.epochs=2")
    rows = list(csv.DictReader(open(copy / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and runmod.epochs_done(copy) == 2
    assert rows[0] == next(csv.DictReader(open(run / "metrics.csv")))   # the first epoch kept as it was


def test_api_estimators_on_the_familys_pair(family_run):
    """mc_elbo, analytic_elbo and iwae_bound on ``vae.arguments(x, y)``: [n] finite, and the bound
    with k = 10 above the ELBO datapoint by datapoint on average (paired, 4 standard errors)."""
    name, run = family_run
    _, vae, test = runmod.load_run(run)
    torch.manual_seed(0)
    args = vae.arguments(test.x[:40], test.labels[:40])
    with torch.no_grad():
        values = [f(vae.model, vae.guide, *args) for f in (mc_elbo, analytic_elbo)]
        values.append(iwae_bound(vae.model, vae.guide, *args, num_samples=10))
    for v in values:
        assert v.shape == (40,) and torch.isfinite(v).all()
    gap = (values[2] - values[1]).double()
    assert gap.mean() > -4 * gap.std() / math.sqrt(len(gap))
