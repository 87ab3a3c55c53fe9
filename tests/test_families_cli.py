"""The model families through the command line, on real MNIST: the three example configs
(examples/configs/mnist-cvae.toml, mnist-m2.toml, mnist-2layer.toml) trained for one epoch on
2,000 images with smaller networks, then evaluated, sampled, plotted and (M2) resumed."""
import csv
import json
import math
import shutil

import pytest
import torch

from pyrovae.app.cli import main

from conftest import needs_mnist, png_pixels

# every test here reads a run trained by a module fixture (one epoch each, 2 to 5 seconds; the module ~25 s)
pytestmark = pytest.mark.slow

SMALL = ["--set", "data.subset=2000", "--set", "data.test_subset=200", "--set", "train.epochs=1"]
#: the configs' networks made smaller, to keep each training to seconds
SHRINK = {
    "cvae": ["--set", "model.hidden=[200]"],
    # and a faster learning rate than Kingma et al.'s 3e-4: one epoch is 19 steps here
    "m2": ["--set", "model.hidden=[200]", "--set", "model.latent_dim=10", "--set", "train.lr=1e-3"],
    "2layer": ["--set", "model.family_options={latent_dims = [20, 10], hidden = [[100], [50]]}",
               "--set", "train.batch_size=100"],
}
#: the figures of a run of a family with labels: a row of samples per class, no manifold or interpolation
LABELLED_FIGURES = {"curves.png", "reconstructions.png", "samples.png", "latent.png"}


def train(family, out, *extra):
    args = ["train", "--config", f"examples/configs/mnist-{family}.toml", "--out", str(out)]
    assert main(args + SMALL + SHRINK[family] + list(extra)) == 0
    return out


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory):
    return train("cvae", tmp_path_factory.mktemp("runs") / "cvae")


@pytest.fixture(scope="module")
def m2_run(tmp_path_factory):
    return train("m2", tmp_path_factory.mktemp("runs") / "m2")


@pytest.fixture(scope="module")
def two_layer_run(tmp_path_factory):
    return train("2layer", tmp_path_factory.mktemp("runs") / "2layer")


def run_error(args, capsys):
    """Run the CLI expecting a user error: exit 2 and one line ``pyrovae: error: ...``; the line."""
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("pyrovae: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def evaluate(run, capsys, *flags):
    """``pyrovae evaluate RUN --json`` on 100 test images with k = 50: the result."""
    assert main(["evaluate", str(run), "--iw-samples", "50", "--test-size", "100", "--json", *flags]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads((run / "evaluation.json").read_text())
    return result


def check_bounds(result):
    """Finite ELBOs in a plausible range of nats per image, and IWAE(k=50) ≥ the ELBO (within 4 SE)."""
    est = result["estimators"]
    assert {"mc_elbo", "analytic_elbo", "iwae_bound(k=50)"} <= set(est), est
    assert result["n"] == 100 and result["units"] == "nats per datapoint (log-probabilities)"
    for name, v in est.items():
        assert math.isfinite(v["mean"]) and math.isfinite(v["se"]) and v["se"] > 0, (name, v)
        # one epoch on 2,000 binary 28×28 images: above coin flips (784 log 2 = 543 nats), below a trained model
        assert -450 < v["mean"] < -100, (name, v)
    elbo, iw = est["analytic_elbo"], est["iwae_bound(k=50)"]
    assert iw["mean"] >= elbo["mean"] - 4 * elbo["se"], est
    both = 4 * (est["mc_elbo"]["se"] ** 2 + elbo["se"] ** 2) ** 0.5 + 1
    assert abs(est["mc_elbo"]["mean"] - elbo["mean"]) < both, est   # two estimates of the same ELBO


def check_figures(run, expected):
    assert {p.name for p in run.glob("*.png")} == expected
    for name in expected:
        png_pixels(run / name)


# -- the conditional VAE ----------------------------------------------------------------------------
@needs_mnist
def test_cvae_config_trains_and_evaluates(cvae_run, capsys):
    summary = json.loads((cvae_run / "summary.json").read_text())
    assert summary["n_train"] == 2000 and summary["n_test"] == 200 and summary["data"].startswith("mnist, dynamic")
    assert "q(z|x,y)" in summary["model"] and "p(x|z,y)" in summary["model"]
    assert -450 < summary["final"]["test_elbo"] < -100 and summary["final"]["kl"] > 1
    result = evaluate(cvae_run, capsys)
    check_bounds(result)
    assert "accuracy" not in result
    assert "not the ConditionalVAE" in result["closed_form_elbo"]   # the notes' closed form is the plain VAE's


@needs_mnist
def test_cvae_plots_a_row_per_class_and_samples_one_label(cvae_run, tmp_path, capsys):
    check_figures(cvae_run, LABELLED_FIGURES)
    height, width = png_pixels(cvae_run / "samples.png").shape[:2]
    assert height > width                                      # 10 rows (a class each) of 8
    out = tmp_path / "threes.png"
    assert main(["sample", str(cvae_run), "--label", "3", "-n", "16", "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [str(out)]
    height, width = png_pixels(out).shape[:2]
    assert width > 2 * height                                  # 16 threes: 2 rows of 8


@needs_mnist
def test_sample_label_is_refused_out_of_range_and_for_models_without_labels(cvae_run, two_layer_run, tmp_path,
                                                                           capsys):
    err = run_error(["sample", str(cvae_run), "--label", "10", "--out", str(tmp_path / "s.png")], capsys)
    assert "--label must be a class in 0..9, got 10" in err
    plain = tmp_path / "vae"
    assert main(["train", "--out", str(plain), "--set", "data.subset=500", "--set", "data.test_subset=100",
                 "--set", "train.epochs=1", "--set", "model.hidden=[50]", "--set", "model.latent_dim=5"]) == 0
    capsys.readouterr()
    for run in (plain, two_layer_run):
        err = run_error(["sample", str(run), "--label", "3", "--out", str(tmp_path / "s.png")], capsys)
        assert "--label draws one class of a model with labels" in err
    assert not (tmp_path / "s.png").exists()


# -- M2 ---------------------------------------------------------------------------------------------
@needs_mnist
def test_m2_config_trains_and_reports_accuracy(m2_run, capsys):
    cfg = (m2_run / "config.toml").read_text()
    assert 'family = "m2"' in cfg and "labeled = 100" in cfg and 'elbo = "enum"' in cfg
    assert "classifier_weight = 60.0" in cfg
    summary = json.loads((m2_run / "summary.json").read_text())
    assert "q(y|x)" in summary["model"] and summary["n_train"] == 2000
    assert -450 < summary["final"]["test_elbo"] < -100
    result = evaluate(m2_run, capsys)
    check_bounds(result)
    acc = result["accuracy"]
    assert 0 <= acc["mean"] <= 1 and acc["se"] >= 0
    assert acc["mean"] > 0.2                       # the classifier learned from its 100 labels (chance: 0.1)
    # the learning curve's test accuracy (all 200 test images), scored after the epoch with the same parameters
    rows = list(csv.DictReader(open(m2_run / "metrics.csv")))
    assert main(["evaluate", str(m2_run), "--iw-samples", "1", "--test-size", "200", "--json"]) == 0
    assert float(rows[-1]["test_accuracy"]) == pytest.approx(json.loads(capsys.readouterr().out)["accuracy"]["mean"],
                                                             abs=5e-6)
    # the text output shows it, with the error rate
    assert main(["evaluate", str(m2_run), "--iw-samples", "50", "--test-size", "100"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if "test accuracy" in ln]
    assert len(line) == 1 and f"{acc['mean']:.4f}" in line[0], line
    assert f"(classification error {100 * (1 - acc['mean']):.2f}%)" in line[0], line


@needs_mnist
def test_m2_plots_and_samples_a_label(m2_run, tmp_path, capsys):
    check_figures(m2_run, LABELLED_FIGURES)
    height, width = png_pixels(m2_run / "samples.png").shape[:2]
    assert height > width                                      # 10 rows (a class each) of 8
    out = tmp_path / "sevens.png"
    assert main(["sample", str(m2_run), "--label", "7", "-n", "8", "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [str(out)]
    png_pixels(out)


def checkpoint(run):
    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)


@needs_mnist
def test_m2_resume_matches_an_uninterrupted_run(m2_run, tmp_path):
    """One more epoch by --resume (its Terms rebuilt from the saved config) equals two epochs straight."""
    resumed = tmp_path / "resumed"
    shutil.copytree(m2_run, resumed)
    assert main(["train", "--out", str(resumed), "--resume", "--set", "train.epochs=2"]) == 0
    straight = train("m2", tmp_path / "straight", "--set", "train.epochs=2")
    rows = [list(csv.DictReader(open(run / "metrics.csv"))) for run in (resumed, straight)]
    assert [int(r["epoch"]) for r in rows[0]] == [1, 2]
    a, b = checkpoint(resumed), checkpoint(straight)
    assert a["epoch"] == b["epoch"] == 2 and sorted(a["params"]) == sorted(b["params"])
    assert any(name.startswith("classifier") for name in a["params"])  # the classifier term's parameters too
    same = ("epoch", "train_elbo", "test_elbo", "reconstruction", "kl", "test_accuracy")  # all but the seconds
    assert [rows[0][0][k] for k in same] == [rows[1][0][k] for k in same]   # epoch 1: the same run
    differ = sorted(n for n in a["params"] if not torch.equal(a["params"][n], b["params"][n]))
    assert not differ, f"parameters that differ after resuming: {differ}"
    assert [[r[k] for k in same] for r in rows[0]] == [[r[k] for k in same] for r in rows[1]]


# -- two stochastic layers ------------------------------------------------------------------------------
@needs_mnist
def test_two_layer_config_trains_evaluates_and_plots(two_layer_run, capsys):
    summary = json.loads((two_layer_run / "summary.json").read_text())
    model = summary["model"]
    assert "p(z1|z2)" in model and "q(z2|x)" in model and "z1 ∈ R^20, z2 ∈ R^10" in model
    assert -450 < summary["final"]["test_elbo"] < -100
    result = evaluate(two_layer_run, capsys)
    check_bounds(result)
    assert "accuracy" not in result
    # no labels: interpolation as for the VAE; latent_dim (the top layer's) 10: no manifold
    check_figures(two_layer_run, LABELLED_FIGURES | {"interpolation.png"})


# -- the estimator lab on the families ------------------------------------------------------------------
@needs_mnist
@pytest.mark.parametrize("run_fixture, closed_form_sites", [("m2_run", ["z"]), ("two_layer_run", ["z2", "z1"])],
                         ids=["m2", "2layer"])
def test_compare_runs_on_the_families(run_fixture, closed_form_sites, request, capsys):
    run = request.getfixturevalue(run_fixture)
    capsys.readouterr()  # what the fixture's training printed
    assert main(["compare", str(run), "--test-size", "20", "--max-k", "10", "--gradient-draws", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["label"]: r for r in result["rows"]}
    assert rows["iwae_bound k=10"]["mean"] >= rows["analytic_elbo r=1"]["mean"] - 4 * rows["analytic_elbo r=1"]["se"]
    assert not rows["closed_form_elbo r=1"]["available"]
    assert result["analytic_sites"] == closed_form_sites     # the sites whose KL has a closed form


@needs_mnist
def test_compare_on_a_cvae_run_scores_with_the_labels(cvae_run, capsys):
    """The estimator lab on a conditional VAE: every estimator with (x, y), the closed form refused
    by name, the encoder-gradient variance measured with the labels."""
    capsys.readouterr()
    assert main(["compare", str(cvae_run), "--test-size", "20", "--max-k", "10", "--gradient-draws", "10",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["label"]: r for r in result["rows"]}
    assert not rows["closed_form_elbo r=1"]["available"]
    elbo, iwae = rows["analytic_elbo r=1"], rows["iwae_bound k=10"]
    assert -450 < elbo["mean"] < -100 and iwae["mean"] >= elbo["mean"] - 4 * elbo["se"]
    assert result["analytic_sites"] == ["z"]
    assert result["gradient_variance"]["variance_ratio"]["score/reparam"] > 1