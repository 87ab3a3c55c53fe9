"""The bad-input and fault catalogue: nothing silently wrong, nothing lost.

Each test is a case a user met: the CLI answers with one line ``pyrovae: error: ...`` naming
the argument or path (exit status 2), or does the safe thing; never a wrong number with exit
status 0, never lost or overwritten work. Runs use the synthetic PPCA set (no data files).
"""
import fcntl
import json
import os
import shutil
import subprocess
import sys

import pyro
import pytest
import torch

import pyrovae
from pyrovae.app.cli import main
from pyrovae.errors import CheckpointError, DataError, InputError, PyrovaeError, TrainingError
from pyrovae.files import write_text
from pyrovae.inference import checkpoint as ckpt
from pyrovae.inference.train import DivergenceMonitor

from conftest import needs_mnist

PPCA = ["--set", "data.dataset=ppca", "--set", "model.latent_dim=2", "--set", "model.hidden=[16]",
        "--set", "model.likelihood=gaussian-learned", "--set", "train.batch_size=500", "--set", "train.device=cpu"]


def train_args(out, epochs=2, *extra):
    return ["train", "--out", str(out), "--set", f"train.epochs={epochs}", *PPCA, *extra]


def one_line_error(args, capsys, code=2):
    """Run the CLI; it must fail with ``code`` and end stderr with one error line (a progress bar may
    come before it); return that line."""
    capsys.readouterr()
    assert main(args) == code
    err = capsys.readouterr().err
    lines = err.rstrip("\n").split("\n")
    assert lines[-1].startswith("pyrovae: error: ") and "Traceback" not in err, err
    assert not any(line.startswith("pyrovae: error: ") for line in lines[:-1]), err
    return lines[-1]


@pytest.fixture(scope="module")
def ppca_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ppca"
    assert main(train_args(out)) == 0
    return out


@pytest.fixture
def run_copy(ppca_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(ppca_run, out)
    return out


@pytest.fixture
def immutable():
    """Make a folder unwritable even for root (chattr +i); skip where that is not possible."""
    made = []

    def make(path):
        if os.geteuid() != 0:
            path.chmod(0o555)
        elif subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here")
        made.append(path)
        return path

    yield make
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)])
        else:
            path.chmod(0o755)


# -- work is never lost or overwritten -----------------------------------------------------------
def test_training_into_a_run_needs_resume_or_force(run_copy, capsys):
    before = (run_copy / "checkpoint.pt").read_bytes()
    err = one_line_error(train_args(run_copy), capsys)
    assert str(run_copy) in err and "--resume" in err and "--force" in err
    assert (run_copy / "checkpoint.pt").read_bytes() == before
    (run_copy / "evaluation.json").write_text("{}")  # an old run's output
    (run_copy / "notes.txt").write_text("mine")       # a user's own file
    assert main(train_args(run_copy, 1, "--force")) == 0
    assert not (run_copy / "evaluation.json").exists() and (run_copy / "notes.txt").read_text() == "mine"
    assert ckpt.load_training(run_copy / "checkpoint.pt")["epoch"] == 1


def test_writes_do_not_follow_planted_links_and_leave_no_temporaries(run_copy, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    for name in ("config.toml.tmp", "checkpoint.pt.tmp", "metrics.csv.tmp", "summary.json.tmp"):
        (run_copy / name).symlink_to(outside)
    (run_copy / ".checkpoint.pt.k3j_9xq2.tmp").write_bytes(b"left by a killed run")
    assert main(["train", "--out", str(run_copy), "--resume", "--set", "train.epochs=3"]) == 0
    assert outside.read_text() == "precious"
    assert not list(run_copy.glob(".*.tmp"))
    assert ckpt.load_training(run_copy / "checkpoint.pt")["epoch"] == 3


def test_a_run_dir_is_held_by_one_process_at_a_time(run_copy, capsys):
    """Two `--force` runs into one folder: the second is refused while the first holds it. The
    mechanism, deterministically: an exclusive flock on the folder taken through another open file
    description (as another process would hold it)."""
    before = (run_copy / "checkpoint.pt").read_bytes()
    other = os.open(run_copy, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        err = one_line_error(train_args(run_copy, 1, "--force"), capsys)
        assert f"{run_copy} is in use by another pyrovae process" in err and "another --out" in err
        assert (run_copy / "checkpoint.pt").read_bytes() == before
    finally:
        os.close(other)
    assert main(train_args(run_copy, 1, "--force")) == 0   # released: the run goes ahead
    assert not [p.name for p in run_copy.iterdir() if "lock" in p.name]  # no lock file left behind


def test_a_failed_start_leaves_no_run_that_blocks_the_same_command(tmp_path, capsys):
    out = tmp_path / "run"
    err = one_line_error(train_args(out, 1, "--set", "data.dataset=arrays", "--set",
                                    f"data.path={tmp_path / 'missing.npz'}"), capsys)
    assert "missing.npz does not exist" in err
    assert main(train_args(out, 1)) == 0                   # not "already holds a run"
    assert ckpt.load_training(out / "checkpoint.pt")["epoch"] == 1


def test_only_pyrovae_temporaries_are_removed(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    mine = {".notes.tmp": "a user's", ".checkpoint.pt.tmp": "also a user's", ".metrics.csv.toolong12.tmp": "too"}
    for name, text in mine.items():
        (out / name).write_text(text)
    (out / ".summary.json.ab_3x9qz.tmp").write_text("left by a killed run")
    assert main(train_args(out, 1)) == 0
    assert {name: (out / name).read_text() for name in mine} == mine
    assert not (out / ".summary.json.ab_3x9qz.tmp").exists()


def test_out_that_is_a_file_or_unwritable_is_refused_before_any_work(tmp_path, capsys, immutable):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert f"--out {afile} is a file" in one_line_error(train_args(afile), capsys)
    (tmp_path / "locked").mkdir()
    locked = immutable(tmp_path / "locked")
    err = one_line_error(train_args(locked / "run"), capsys)
    assert f"cannot write to the run directory {locked / 'run'}" in err and not (locked / "run").exists()
    (tmp_path / "full").mkdir()
    full = immutable(tmp_path / "full")
    err = one_line_error(train_args(full), capsys)
    assert f"cannot write to the run directory {full}" in err


def test_evaluate_prints_its_results_before_a_failed_write(run_copy, capsys):
    (run_copy / "evaluation.json").mkdir()  # cannot be replaced by a file
    assert main(["evaluate", str(run_copy), "--iw-samples", "5", "--test-size", "20", "--json"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["estimators"]["iwae_bound(k=5)"]["mean"] < 0
    assert err.startswith("pyrovae: error: ") and "evaluation.json" in err and err.count("\n") == 1, err


def test_plot_a_run_that_kept_no_metrics_csv(run_copy, capsys):
    """train.log = [] writes no metrics.csv: `plot` draws the curves from the checkpoint's history."""
    (run_copy / "metrics.csv").unlink()
    (run_copy / "curves.png").unlink()
    assert main(["plot", str(run_copy)]) == 0
    assert str(run_copy / "curves.png") in capsys.readouterr().out and (run_copy / "curves.png").stat().st_size > 0


def test_a_write_refused_names_the_target_not_the_temporary_file(tmp_path, immutable, run_copy, capsys):
    (tmp_path / "locked").mkdir()
    locked = immutable(tmp_path / "locked")
    with pytest.raises(OSError) as err:
        write_text(locked / "summary.json", "{}")
    assert err.value.filename == str(locked / "summary.json")
    (run_copy / "evaluation.json").mkdir()  # a folder where the file should be: os.replace fails
    err = one_line_error(["evaluate", str(run_copy), "--iw-samples", "2", "--test-size", "5", "--json"], capsys)
    assert f"{run_copy / 'evaluation.json'}: " in err and ".tmp" not in err


def test_a_shape_error_raised_inside_a_model_stays_one_line():
    """Pyro appends the trace's site shapes to an error raised inside a model; ours stays one line."""
    vae = pyrovae.VAE((5,), 2, hidden=(4,))
    for estimate in (pyrovae.mc_elbo, pyrovae.iwae_bound):
        with pytest.raises(DataError) as err:
            estimate(vae.model, vae.guide, torch.rand(3, 6))
        assert str(err.value) == "x must have shape [batch, 5], got [3, 6]"


# -- no wrong number with exit status 0 ----------------------------------------------------------
def test_a_run_that_diverges_without_nan_stops_naming_the_epoch_and_the_checkpoint(tmp_path, capsys):
    """lr = 10 sends a Bernoulli VAE's loss from 15 to 2e8 nats in one step, finite all along."""
    x = (torch.rand(1000, 20, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    vae = pyrovae.VAE(20, 2, hidden=(16,))
    with pytest.raises(TrainingError, match=r"training diverged at epoch 1, step 2: the loss jumped to [0-9.e+]+ nats "
                                            r"per datapoint from 1[0-9.]+ at the first step.*no checkpoint was written"):
        pyrovae.train(vae.model, vae.guide, x, epochs=3, batch_size=100, lr=10.0, progress=False,
                      checkpoint=tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()
    err = one_line_error(train_args(tmp_path / "cli", 3, "--set", "train.lr=1e4", "--set", "train.batch_size=50"), capsys)
    assert "training diverged at epoch 1" in err and "no checkpoint was written" in err


def test_the_monitor_flags_explosions_and_nothing_else():
    steady = DivergenceMonitor()
    assert not any(steady.diverged(550 * 0.99 ** t + 90) for t in range(2000))  # a loss that falls
    crossing = DivergenceMonitor()
    assert not any(crossing.diverged(300 - t) for t in range(1400))  # Frey Face: the loss goes negative
    growing = DivergenceMonitor()
    flags = [growing.diverged(500 * 10.0 ** t) for t in range(6)]   # grows tenfold a step
    assert flags == [False, False, False, False, True, True]
    assert DivergenceMonitor().diverged(float("nan")) and DivergenceMonitor().diverged(float("-inf"))


@pytest.mark.parametrize("command", [["evaluate"], ["sample"], ["train", "--resume"]])
def test_a_checkpoint_holding_nan_is_refused(run_copy, command, capsys):
    state = torch.load(run_copy / "checkpoint.pt", weights_only=True)
    name = sorted(state["params"])[0]
    state["params"][name][..., 0] = float("nan")
    torch.save(state, run_copy / "checkpoint.pt")
    args = [command[0], *(["--out"] if command[0] == "train" else []), str(run_copy), *command[1:]]
    if command[0] == "train":
        args += ["--set", "train.epochs=5"]
    err = one_line_error(args, capsys)
    assert f"holds NaN/Inf in parameter {name!r}" in err


@pytest.mark.parametrize("args, message", [
    (["evaluate", "RUN", "--test-size", "-1"], "argument --test-size: expected an integer >= 0, got -1"),
    (["evaluate", "RUN", "--test-size", "5000"], "--test-size 5000 is larger than the test set (1000 datapoints)"),
    (["evaluate", "RUN", "--batch-size", "0"], "argument --batch-size: expected a positive integer, got 0"),
    (["evaluate", "RUN", "--iw-samples", "0"], "argument --iw-samples: expected a positive integer, got 0"),
    (["evaluate", "RUN", "--iw-samples", "2.5"], "argument --iw-samples: expected an integer, got '2.5'"),
    (["sample", "RUN", "-n", "0"], "argument -n: expected a positive integer, got 0"),
    (["compare", "RUN", "--max-k", "0"], "argument --max-k: expected a positive integer, got 0"),
])
def test_counts_are_checked_where_they_enter_naming_the_flag(ppca_run, args, message, capsys):
    args = [str(ppca_run) if a == "RUN" else a for a in args]
    if args[-1] == "5000":
        err = one_line_error(args, capsys)
    else:
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
    assert message in err


def test_estimator_counts_name_their_own_argument():
    vae = pyrovae.VAE(5, 2, likelihood="gaussian", hidden=(8,))
    x = torch.randn(4, 5)
    with pytest.raises(InputError, match="num_samples must be a positive integer, got 0"):
        pyrovae.iwae_bound(vae.model, vae.guide, x, num_samples=0)
    for bad in (0, -3):
        with pytest.raises(InputError, match=f"chunk_size must be a positive integer, got {bad}"):
            pyrovae.iwae_bound(vae.model, vae.guide, x, num_samples=10, chunk_size=bad)


def test_data_of_another_dtype_is_converted_or_refused_by_name():
    vae = pyrovae.VAE(6, 2, hidden=(8,))
    x = (torch.rand(200, 6, generator=torch.Generator().manual_seed(0)) > 0.5)
    for data in (x.double(), x.half(), x):  # float64, float16, bool: converted to the VAE's float32
        pyro.clear_param_store()
        history = pyrovae.train(vae.model, vae.guide, data, epochs=1, batch_size=50, progress=False)
        assert -10 < history[0]["train_elbo"] < 0
    with pytest.raises(DataError, match=r"x must be a floating-point tensor, got dtype torch.uint8: convert 8-bit "
                                        r"images to intensities in \[0, 1\] with x.float\(\) / 255"):
        pyrovae.train(vae.model, vae.guide, (x * 255).to(torch.uint8), epochs=1, progress=False)
    with pytest.raises(DataError, match=r"x has dtype torch.float64 but the VAE's parameters have dtype torch.float32"):
        pyrovae.mc_elbo(vae.model, vae.guide, x.double())


@pytest.mark.slow
def test_evaluate_compile_without_a_cxx_compiler_records_that_it_ran_eagerly(run_copy, tmp_path):
    """`--compile` where Inductor finds no C++ compiler: the networks run eagerly (a warning), and
    evaluation.json says so ("compiled": false), not what was asked."""
    env = {**os.environ, "CXX": str(tmp_path / "no-such-c++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    done = subprocess.run([sys.executable, "-m", "pyrovae", "evaluate", str(run_copy), "--compile", "--iw-samples", "2",
                           "--test-size", "20", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "it runs without compiling" in done.stderr
    assert json.loads(done.stdout)["compiled"] is False
    assert json.loads((run_copy / "evaluation.json").read_text())["compiled"] is False


def test_evaluate_with_a_seed_is_reproducible(run_copy, capsys):
    results = []
    for seed in (3, 3, 4):
        assert main(["evaluate", str(run_copy), "--iw-samples", "5", "--test-size", "50", "--json", "--seed",
                     str(seed)]) == 0
        results.append(json.loads(capsys.readouterr().out))
        assert set(results[-1].pop("seconds")) == set(results[-1]["estimators"])  # wall times: not reproducible
    assert results[0] == results[1]
    assert results[2]["estimators"] != results[0]["estimators"]


def test_resume_with_no_epochs_left_says_there_is_nothing_to_do(run_copy, capsys):
    before = (run_copy / "checkpoint.pt").read_bytes()
    assert main(["train", "--out", str(run_copy), "--resume", "--set", "train.epochs=1"]) == 0
    assert "has already trained 2 epoch(s) (train.epochs = 1): nothing to do" in capsys.readouterr().err
    assert (run_copy / "checkpoint.pt").read_bytes() == before


def test_resume_without_a_checkpoint(tmp_path, capsys):
    assert "holds no checkpoint.pt to continue" in one_line_error(train_args(tmp_path / "new", 1, "--resume"), capsys)


# -- errors, as a design ---------------------------------------------------------------------------
def test_every_user_error_is_a_pyrovae_error():
    for cls in (InputError, DataError, CheckpointError, TrainingError):
        assert issubclass(cls, PyrovaeError)
    with pytest.raises(PyrovaeError):
        pyrovae.VAE(0, 2)
    with pytest.raises(PyrovaeError):
        pyrovae.VAE(5, 2, prior="nope")


def test_a_bug_is_shown_with_its_traceback_and_a_request_to_report_it(tmp_path):
    """Not a user mistake: a component that fails inside (here a user module's prior raising
    ZeroDivisionError) surfaces whole, exit status 1."""
    (tmp_path / "broken.py").write_text(
        "from pyrovae import PRIORS\nfrom pyrovae.components.priors import StandardNormal\n\n"
        "@PRIORS.register('broken-for-test')\nclass Broken(StandardNormal):\n"
        "    def forward(self):\n        return 1 / 0\n")
    (tmp_path / "c.toml").write_text('import = ["broken.py"]\n[model]\nprior = "broken-for-test"\n')
    out = subprocess.run([sys.executable, "-m", "pyrovae", "train", "--config", str(tmp_path / "c.toml"),
                          "--out", str(tmp_path / "r"), *PPCA], capture_output=True, text=True)
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "ZeroDivisionError" in out.stderr
    assert "this is a bug in pyrovae: please report it" in out.stderr


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.pop("params"), "its 'params' entry must be a dict, got nothing"),
    (lambda s: s.update(epoch="2"), "its 'epoch' entry must be a int, got str"),
    (lambda s: s["params"].update({sorted(s["params"])[0]: [1.0, 2.0]}), "is not a floating-point tensor"),
    (lambda s: s["params"].update({k: torch.zeros(3, 3) for k in sorted(s["params"])[:1]}), "has shape [3, 3] in the checkpoint"),
    (lambda s: s.update(optimizer={"state": 3}), "the checkpoint's optimizer or random state is damaged"),
])
def test_a_crafted_checkpoint_gives_one_line(run_copy, damage, message, capsys):
    state = torch.load(run_copy / "checkpoint.pt", weights_only=True)
    damage(state)
    torch.save(state, run_copy / "checkpoint.pt")
    command = ["train", "--out", str(run_copy), "--resume", "--set", "train.epochs=3"]
    assert message in one_line_error(command if "optimizer" in message else ["sample", str(run_copy)], capsys)


def test_random_bytes_are_not_a_checkpoint_and_the_message_does_not_suggest_unpickling(run_copy, capsys):
    (run_copy / "checkpoint.pt").write_bytes(os.urandom(4096))
    err = one_line_error(["evaluate", str(run_copy)], capsys)
    assert "is not a readable pyrovae checkpoint" in err and "weights_only" not in err


# -- data ----------------------------------------------------------------------------------------
@needs_mnist
def test_sample_needs_no_data_files(tmp_path, monkeypatch, capsys):
    out = tmp_path / "mnist"
    assert main(["train", "--out", str(out), "--set", "data.subset=500", "--set", "data.test_subset=100",
                 "--set", "train.epochs=1", "--set", "model.hidden=[32]", "--set", "model.latent_dim=2"]) == 0
    monkeypatch.setenv("PYROVAE_DATA_DIR", str(tmp_path / "no-data-here"))
    monkeypatch.setenv("PYROVAE_CACHE_DIR", str(tmp_path / "no-cache-here"))
    assert main(["sample", str(out), "-n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 1000
    assert "no-data-here" in one_line_error(["reconstruct", str(out)], capsys)  # this one reads test images
