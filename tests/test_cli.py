"""The pyrovae command line end to end on real MNIST, and its one-line user errors."""
import csv
import json
import os
import subprocess
import sys

import pytest

from pyrovae.app.cli import main

from conftest import MNIST_MARKS, needs_mnist, png_pixels

SMALL = ["--set", "data.subset=2000", "--set", "data.test_subset=500", "--set", "train.epochs=2",
         "--set", "model.hidden=[200]", "--set", "train.batch_size=100"]


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """One short training on 2000 real MNIST images, shared by the tests below."""
    out = tmp_path_factory.mktemp("run") / "mnist"
    assert main(["train", "--config", "examples/configs/mnist.toml", "--out", str(out)] + SMALL) == 0
    return out


@needs_mnist
def test_train_writes_the_run_dir(mnist_run):
    names = {p.name for p in mnist_run.iterdir()}
    assert {"config.toml", "checkpoint.pt", "metrics.csv", "summary.json", "curves.png", "reconstructions.png",
            "samples.png", "latent.png", "interpolation.png"} <= names
    for name in names:
        if name.endswith(".png"):
            png_pixels(mnist_run / name)
    rows = list(csv.DictReader(open(mnist_run / "metrics.csv")))
    assert list(rows[0]) == ["epoch", "train_elbo", "test_elbo", "reconstruction", "kl", "seconds", "lr",
                             "samples_per_second"]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["test_elbo"]) > float(rows[0]["test_elbo"])           # the ELBO improves
    assert -400 < float(rows[1]["test_elbo"]) < -100                          # nats per image, a log-probability
    summary = json.loads((mnist_run / "summary.json").read_text())
    assert summary["data"].startswith("mnist, dynamic binarization") and summary["n_train"] == 2000
    assert summary["warnings"] == [] and summary["final"]["kl"] > 1
    assert "subset = 2000" in (mnist_run / "config.toml").read_text()


@pytest.mark.slow
@needs_mnist
def test_train_warns_when_the_posterior_collapses(tmp_path, capsys):
    """A VampPrior on tanh networks collapses from the first epoch (BENCHMARKS.md): say so."""
    args = ["train", "--out", str(tmp_path / "r"), "--set", "model.prior=vamp", "--set", "model.activation=tanh",
            "--set", "model.prior_options={components = 10}", "--set", "model.hidden=[200, 200]",
            "--set", "data.subset=6000", "--set", "data.test_subset=500", "--set", "train.epochs=2",
            "--set", "train.batch_size=100"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["final"]["kl"] < 0.1
    assert "the posterior has collapsed" in capsys.readouterr().err and len(summary["warnings"]) == 1


def test_collapse_warning_threshold():
    from pyrovae.app.run import collapse_warning

    assert collapse_warning(0.0004) is not None and "0.0004 nats" in collapse_warning(0.0004)
    assert collapse_warning(5.0) is None


@needs_mnist
def test_evaluate_reports_every_estimator(mnist_run, capsys):
    assert main(["evaluate", str(mnist_run), "--iw-samples", "50", "--test-size", "100", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    est = result["estimators"]
    assert set(est) == {"mc_elbo", "analytic_elbo", "closed_form_elbo", "iwae_bound(k=50)"}
    assert result["n"] == 100 and "test set" in result["data"]
    elbo, iw = est["analytic_elbo"], est["iwae_bound(k=50)"]
    assert iw["mean"] > elbo["mean"]                                          # a tighter bound
    assert abs(est["mc_elbo"]["mean"] - elbo["mean"]) < 4 * (est["mc_elbo"]["se"] ** 2 + elbo["se"] ** 2) ** 0.5 + 1
    assert json.loads((mnist_run / "evaluation.json").read_text())["estimators"] == est
    assert result["compiled"] is False  # 100 × 50 importance samples: below the automatic compile's threshold


@needs_mnist
def test_a_device_this_machine_lacks_is_one_line_for_a_run_dir(mnist_run):
    from pyrovae.app.run import evaluate_run
    from pyrovae.errors import InputError

    with pytest.raises(InputError, match=r"^device must be 'auto' or a device of this machine .*got 'cuda:99'"):
        evaluate_run(mnist_run, device="cuda:99", iw_samples=2, test_size=2, progress=False)


def test_evaluate_compiles_large_cpu_evaluations_by_default(monkeypatch):
    """"auto" compiles on a CPU from AUTO_COMPILE_SAMPLES importance samples when a C++ compiler is
    found; --compile / --no-compile decide; a GPU compiles only when asked; anything else is refused."""
    import shutil

    import torch
    from pyrovae.app.cli import parser
    from pyrovae.app.run import AUTO_COMPILE_SAMPLES, should_compile
    from pyrovae.errors import InputError

    cpu, gpu, big = torch.device("cpu"), torch.device("cuda"), AUTO_COMPILE_SAMPLES
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/g++" if name == "g++" else None)
    assert should_compile("auto", big, cpu) and not should_compile("auto", big - 1, cpu)
    assert not should_compile("auto", big, gpu) and should_compile("on", 1, gpu) and should_compile(True, 1, cpu)
    assert not should_compile("off", 10 * big, cpu) and not should_compile(False, 10 * big, cpu)
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no C++ compiler: eager
    assert not should_compile("auto", big, cpu) and should_compile("on", big, cpu)
    monkeypatch.setenv("CXX", "my-cxx")
    monkeypatch.setattr(shutil, "which", lambda name: "/opt/my-cxx" if name == "my-cxx" else None)
    assert should_compile("auto", big, cpu)
    with pytest.raises(InputError, match="compile_networks must be .* got 'yes'"):
        should_compile("yes", big, cpu)
    parse = parser().parse_args
    assert [parse(["evaluate", "r", *flag]).compile for flag in ([], ["--compile"], ["--no-compile"])] == \
        ["auto", "on", "off"]


@needs_mnist
def test_sample_reconstruct_plot(mnist_run, tmp_path, capsys):
    assert main(["sample", str(mnist_run), "-n", "16", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["reconstruct", str(mnist_run), "--out", str(tmp_path / "r.png")]) == 0
    assert capsys.readouterr().out.splitlines() == [str(tmp_path / "s.png"), str(tmp_path / "r.png")]
    assert (tmp_path / "s.png").stat().st_size > 1000 and (tmp_path / "r.png").stat().st_size > 1000
    # 16 samples are drawn 8 to a row (2 rows), 10 reconstructions under their originals (2 rows):
    # both grids are wide; 64 samples (the default) would make a square one
    for name in ("s.png", "r.png"):
        height, width = png_pixels(tmp_path / name).shape[:2]
        assert width > 2 * height, (name, width, height)
    # `plot` rewrites every figure of the run (backdated first, so that an unwritten one shows)
    figures = {"curves.png", "reconstructions.png", "samples.png", "latent.png", "interpolation.png"}
    for name in figures:
        os.utime(mnist_run / name, ns=(0, 0))
    assert main(["plot", str(mnist_run)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert {os.path.basename(line) for line in printed} == figures and len(printed) == len(figures)
    assert {os.path.dirname(line) for line in printed} == {str(mnist_run)}
    for name in figures:  # latent_dim = 50: no manifold.png
        assert (mnist_run / name).stat().st_mtime_ns > 0, name
        png_pixels(mnist_run / name)


@pytest.mark.slow
@needs_mnist
def test_resume_through_the_cli_matches_an_uninterrupted_run(mnist_run, tmp_path):
    out = tmp_path / "resumed"
    args = ["train", "--config", "examples/configs/mnist.toml", "--out", str(out)] + SMALL
    assert main(args + ["--set", "train.epochs=1"]) == 0
    assert main(["train", "--out", str(out), "--resume", "--set", "train.epochs=2"]) == 0
    straight = list(csv.DictReader(open(mnist_run / "metrics.csv")))
    resumed = list(csv.DictReader(open(out / "metrics.csv")))
    for key in ("epoch", "train_elbo", "test_elbo", "reconstruction", "kl"):
        assert [r[key] for r in resumed] == [r[key] for r in straight]


@needs_mnist
def test_resume_refuses_other_changes(mnist_run, capsys):
    err = run_error(["train", "--out", str(mnist_run), "--resume", "--set", "model.latent_dim=3"], capsys)
    assert "only --set train.epochs=N" in err


def run_error(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("pyrovae: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("override,message", [
    ("train.epochs=0", "train.epochs must be > 0, got 0"),
    ("train.kl_warmup=-2", "train.kl_warmup must be >= 0, got -2"),
    ("train.kl_warmup=0.5", "train.kl_warmup must be an integer, got 0.5"),
    ("model.prior=gauss", "model.prior must be one of 'laplace', 'learned-normal', 'mixture', 'normal', 'vamp'; got 'gauss'"),
    ("train.optimizer=sgd", "unknown key train.optimizer; allowed keys in [train]"),
    ("trainer.epochs=3", "unknown section(s) ['trainer']"),
    ("train.lr=fast", "train.lr must be a number, got 'fast'"),
    ("data.binarize=sometimes", "data.binarize must be one of 'none', 'static', 'dynamic'"),
    ("train.traced_step=yes", "train.traced_step must be one of 'auto', 'on', 'off'; got 'yes'"),
    # these two are found only when the model is built, after the data are read
    pytest.param("model.prior=mixture model.prior_options={components=0}",
                 "components must be a positive integer, got 0", marks=MNIST_MARKS),
    pytest.param("model.prior_options={components=3}",
                 "unknown option(s) ['components'] for prior 'normal'; valid options: none", marks=MNIST_MARKS),
])
def test_config_errors_are_one_line(override, message, tmp_path, capsys):
    err = run_error(["train", "--config", "examples/configs/mnist.toml", "--out", str(tmp_path / "r"),
                     "--set", "data.subset=100"] + [a for o in override.split() for a in ("--set", o)], capsys)
    assert message in err


def test_bad_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3")
    assert "is not valid TOML" in run_error(["train", "--config", str(bad), "--out", str(tmp_path / "r")], capsys)
    assert "does not exist" in run_error(["train", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "r")], capsys)


def test_missing_run_dir_and_corrupt_checkpoint(tmp_path, capsys):
    assert "run directory" in run_error(["evaluate", str(tmp_path / "nope")], capsys)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    assert "not a readable pyrovae checkpoint" in run_error(["sample", str(tmp_path / "run")], capsys)


def test_missing_data_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PYROVAE_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("PYROVAE_CACHE_DIR", str(tmp_path / "cache"))  # nothing extracted before either
    err = run_error(["train", "--out", str(tmp_path / "r"), "--set", "train.epochs=1"], capsys)
    assert str(tmp_path / "empty") in err and "train-images-idx3-ubyte.gz" in err


def test_debug_shows_the_traceback_and_keeps_a_user_errors_status(tmp_path, capsys):
    """--debug adds the traceback; the exit status still says a user's mistake (2), not a bug (1)."""
    assert main(["--debug", "evaluate", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "FileNotFoundError" in err
    assert err.rstrip().splitlines()[-1].startswith("pyrovae: error: ") and str(tmp_path / "nope") in err


@pytest.mark.slow
def test_python_dash_m_and_help():
    out = subprocess.run([sys.executable, "-m", "pyrovae", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("train", "evaluate", "sample", "reconstruct", "plot"):
        assert command in out.stdout


@pytest.mark.slow
@needs_mnist
def test_compare_writes_table_json_and_plot(mnist_run, capsys):
    assert main(["compare", str(mnist_run), "--test-size", "60", "--max-k", "100", "--gradient-draws", "20",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    labels = [r["label"] for r in result["rows"]]
    assert labels == ["mc_elbo r=1", "mc_elbo r=10", "mc_elbo r=100", "analytic_elbo r=1", "closed_form_elbo r=1",
                      "iwae_bound k=1", "iwae_bound k=10", "iwae_bound k=100"]
    assert result["iw_samples_left_out"] == [1000, 5000]
    assert result["gradient_variance"]["variance_ratio"]["score/reparam"] > 10
    assert (mnist_run / "compare.png").stat().st_size > 10000
    height, width = png_pixels(mnist_run / "compare.png").shape[:2]
    assert width > height  # two panels side by side
    assert json.loads((mnist_run / "compare.json").read_text())["n"] == 60
