"""Watching a run: the callback protocol of ``train``, samples per second, and the run dir's writers
(metrics.csv, TensorBoard event files, an MLflow run), each read back with its own reader."""
import csv
import math
import os
import socket
import sys
from types import SimpleNamespace

import pyro
import pytest
import torch

import pyrovae
from pyrovae.app import config as cfgmod
from pyrovae.app import logs
from pyrovae.app.cli import main
from pyrovae.errors import ConfigError, InputError, InputTypeError
from pyrovae.inference.callbacks import Callback
from pyrovae.inference.train import train

N, B, EPOCHS = 240, 50, 3
STEPS = math.ceil(N / B)  # 5 steps per epoch, the last one of 40 points


def tiny_vae_data():
    x = (torch.rand(N, 6, 5, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    return pyrovae.VAE((6, 5), 2, hidden=(16,)), x


def fit(vae, x, epochs, callbacks=(), tmp_path=None, resume=False, **kwargs):
    return train(vae.model, vae.guide, x, epochs=epochs, batch_size=B, test_data=x[:40], progress=False,
                 seed=None if resume else 1, callbacks=callbacks, resume=resume,
                 checkpoint=None if tmp_path is None else tmp_path / "checkpoint.pt", **kwargs)


class Recorder(Callback):
    """Every call, with what the state said at that moment."""

    def __init__(self):
        self.calls = []

    def on_train_start(self, state):
        self.calls.append(("start", state.epoch, len(state.history), state.epochs))

    def on_step(self, state):
        self.calls.append(("step", state.epoch, state.steps, state.loss, state.samples_per_second))

    def on_epoch_end(self, state):
        self.calls.append(("epoch", state.epoch, [dict(r) for r in state.history]))

    def on_train_end(self, state):
        self.calls.append(("end", state.epoch, len(state.history), state.error))

    def of(self, kind):
        return [c for c in self.calls if c[0] == kind]


def test_a_callback_sees_the_start_every_step_every_epoch_and_the_end(tmp_path):
    vae, x = tiny_vae_data()
    rec, old_style = Recorder(), []
    history = fit(vae, x, EPOCHS, [rec], tmp_path, callback=lambda h: old_style.append(len(h)))
    assert rec.calls[0] == ("start", 0, 0, EPOCHS) and rec.calls[-1] == ("end", EPOCHS, EPOCHS, None)
    assert [c[0] for c in rec.calls] == ["start"] + (["step"] * STEPS + ["epoch"]) * EPOCHS + ["end"]
    steps = rec.of("step")
    assert [c[2] for c in steps] == list(range(1, EPOCHS * STEPS + 1))        # state.steps counts them
    assert [c[1] for c in steps] == [e for e in range(1, EPOCHS + 1) for _ in range(STEPS)]
    assert all(math.isfinite(c[3]) and c[4] > 0 for c in steps)             # the step's loss, a running rate
    # each epoch's end sees the history up to it, the rows train returns
    assert [c[2] for c in rec.of("epoch")] == [history[:k] for k in range(1, EPOCHS + 1)]
    assert old_style == [1, 2, 3]                                             # callback= still works


def test_a_resumed_run_counts_its_epochs_and_steps_from_the_checkpoint(tmp_path):
    vae, x = tiny_vae_data()
    straight = fit(vae, x, 2, [], tmp_path)
    vae, x = tiny_vae_data()
    rec = Recorder()
    resumed = fit(vae, x, 4, [rec], tmp_path, resume=True)
    assert rec.calls[0] == ("start", 2, 2, 4) and rec.calls[-1] == ("end", 4, 4, None)
    assert [c[1] for c in rec.of("epoch")] == [3, 4]
    assert [len(c[2]) for c in rec.of("epoch")] == [3, 4] and rec.of("epoch")[0][2][:2] == straight
    assert len(rec.of("step")) == 2 * STEPS and rec.of("step")[0][2] == 1      # this session's steps
    assert resumed[:2] == straight


def test_scores_added_in_on_epoch_scored_are_in_the_checkpoint_and_seen_by_on_epoch_end(tmp_path):
    """``on_epoch_scored`` runs after the epoch's row is appended and before its checkpoint: what a
    callback adds there is saved with the epoch and seen by every ``on_epoch_end`` (the loggers)."""
    from pyrovae.inference.checkpoint import load_training

    class Score(Callback):
        def on_epoch_scored(self, state):
            state.history[-1]["test_score"] = float(state.epoch) / 10

    class SavedAtEpochEnd(Callback):
        def __init__(self):
            self.saved, self.seen = [], []

        def on_epoch_end(self, state):
            self.seen.append(state.history[-1].get("test_score"))
            self.saved.append(load_training(tmp_path / "checkpoint.pt")["history"][-1].get("test_score"))

    vae, x = tiny_vae_data()
    watcher = SavedAtEpochEnd()
    history = fit(vae, x, 2, [watcher, Score()], tmp_path)  # listed after the watcher: still called first
    assert [row["test_score"] for row in history] == [0.1, 0.2]
    assert watcher.seen == [0.1, 0.2] and watcher.saved == [0.1, 0.2]


def test_on_train_end_is_told_the_error_that_stopped_training_and_every_callback_gets_it(tmp_path):
    class Stop(Callback):
        def on_epoch_end(self, state):
            if state.epoch == 2:
                raise RuntimeError("stop here")

    first, last = Recorder(), Recorder()
    vae, x = tiny_vae_data()
    with pytest.raises(RuntimeError, match="stop here"):
        fit(vae, x, EPOCHS, [first, Stop(), last], tmp_path)
    for rec in (first, last):
        end = rec.calls[-1]
        assert end[:3] == ("end", 2, 2) and isinstance(end[3], RuntimeError)
    assert [c[1] for c in last.of("epoch")] == [1]      # the callback after the failing one: epoch 1 only


def test_callbacks_that_are_not_callbacks_are_refused():
    vae, x = tiny_vae_data()
    with pytest.raises(InputTypeError, match=r"callbacks\[1\] must be a pyrovae Callback"):
        fit(vae, x, 1, [Callback(), object()])
    with pytest.raises(InputTypeError, match="callbacks must be a list"):
        fit(vae, x, 1, Callback())


def test_samples_per_second_counts_the_training_time_only_and_is_in_metrics_csv(tmp_path):
    vae, x = tiny_vae_data()
    history = fit(vae, x, 2, [logs.CSVLogger(tmp_path)], tmp_path)
    for row in history:
        # N datapoints in less time than the epoch's seconds, which include the evaluation
        assert row["samples_per_second"] > N / row["seconds"] > 0
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert list(rows[0]) == logs.METRIC_COLUMNS and logs.METRIC_COLUMNS[-1] == "samples_per_second"
    for row, written in zip(history, rows):
        assert int(written["epoch"]) == row["epoch"]
        for key in logs.METRIC_COLUMNS[1:]:
            assert float(written[key]) == pytest.approx(row[key], rel=1e-5)   # 6 significant digits


def tensorboard_scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


@pytest.mark.slow
def test_tensorboard_event_files_hold_the_history_and_the_image_grids(tmp_path):
    pytest.importorskip("tensorboard", reason="needs the tensorboard extra: pip install 'pyrovae[tensorboard]'")
    vae, x = tiny_vae_data()
    writer = logs.TensorBoardLogger(tmp_path, images=lambda state: logs.image_grids(vae, x[:8]))
    history = fit(vae, x, 2, [writer], tmp_path)
    vae, x = tiny_vae_data()
    writer = logs.TensorBoardLogger(tmp_path, images=lambda state: logs.image_grids(vae, x[:8]))
    history = fit(vae, x, EPOCHS, [writer], tmp_path, resume=True)          # a second session adds epoch 3
    events = tensorboard_scalars(tmp_path / "tensorboard")
    for key, tag in logs.TENSORBOARD_TAGS.items():
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3]
        assert [s.value for s in scalars] == pytest.approx([row[key] for row in history], rel=1e-6)  # float32
    # 8×8 samples of 6×5 pixels and 8 originals above 8 reconstructions, with 1-pixel lines between
    for tag, (height, width) in {"samples": (8 * 7 + 1, 8 * 6 + 1), "reconstructions": (2 * 7 + 1, 8 * 6 + 1)}.items():
        images = events.Images(tag)
        assert [i.step for i in images] == [1, 2, 3]
        assert {(i.height, i.width) for i in images} == {(height, width)}


def test_tensorboard_removes_only_the_event_files_pyrovae_wrote(tmp_path):
    """A fresh run replaces the event files of the run it replaces (listed as pyrovae's) and never
    touches files it did not write: a folder holding a user's own event files is refused."""
    pytest.importorskip("tensorboard", reason="needs the tensorboard extra: pip install 'pyrovae[tensorboard]'")
    fresh = SimpleNamespace(history=[])
    first = logs.TensorBoardLogger(tmp_path)
    first.on_train_start(fresh)
    first.on_train_end(fresh)
    (ours,) = first.written()
    second = logs.TensorBoardLogger(tmp_path)
    second.on_train_start(fresh)                                          # --force: the old run's file goes
    second.on_train_end(fresh)
    assert not (tmp_path / "tensorboard" / ours).exists() and len(second.written()) == 1
    users = tmp_path / "mine" / "tensorboard" / "events.out.tfevents.1700000000.host.1.0"
    users.parent.mkdir(parents=True)
    users.write_bytes(b"the user's own events")
    with pytest.raises(InputError, match=f"{users.parent} holds event files pyrovae did not write "
                                         f"\\({users.name}\\): move them elsewhere"):
        logs.TensorBoardLogger(tmp_path / "mine").on_train_start(fresh)
    assert users.read_bytes() == b"the user's own events"


def test_image_grids_leave_the_random_state_alone_and_show_the_data():
    vae, x = tiny_vae_data()
    state = torch.get_rng_state()
    first, again = logs.image_grids(vae, x[:8]), logs.image_grids(vae, x[:8])
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first["samples"], again["samples"])                      # the same draws every epoch
    grid = first["reconstructions"][0]                                           # [15, 49]
    assert torch.equal(grid[1:7, 1:6], x[0]) and torch.equal(grid[1:7, 43:48], x[7])  # the originals, top row
    assert logs.image_grids(pyrovae.VAE((5,), 2, hidden=(4,)), torch.zeros(3, 5)) == {}  # not images: nothing


@pytest.mark.slow
def test_mlflow_run_holds_the_config_the_history_and_the_plots(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="needs the mlflow extra: pip install 'pyrovae[mlflow]'")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")            # the default store: RUN_DIR/../mlruns
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "unset")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")        # the writer allows MLflow's file store itself
    run_dir, cfg = tmp_path / "run", cfgmod.load(None, ["train.lr=0.002", "model.prior_options.components=5"])
    vae, x = tiny_vae_data()
    first = logs.MLflowLogger(run_dir, config=cfg)
    fit(vae, x, 2, [first], tmp_path)
    vae, x = tiny_vae_data()
    second = logs.MLflowLogger(run_dir, config=cfg)
    history = fit(vae, x, EPOCHS, [second], tmp_path, resume=True)             # continues the same MLflow run
    plot = run_dir / "curves.png"
    run_dir.mkdir()
    plot.write_bytes(b"\x89PNG")
    logs.log_outputs([second], [plot])
    client = mlflow.MlflowClient((tmp_path / "mlruns").as_uri())
    assert second.run_id == first.run_id
    run = client.get_run(second.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["train.lr"] == "0.002" and run.data.params["model.prior_options.components"] == "5"
    for key in ("train_elbo", "test_elbo", "kl", "samples_per_second", "lr"):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert logged == [(row["epoch"], pytest.approx(row[key], rel=1e-12)) for row in history]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["curves.png"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_server_down_or_unknown_scheme_is_one_line_naming_the_uri(tmp_path, monkeypatch, capsys):
    """MLflow's errors are user errors: one line naming the URI; a server that is down is said
    after one try (MLflow would otherwise retry for minutes)."""
    pytest.importorskip("mlflow", reason="needs the mlflow extra: pip install 'pyrovae[mlflow]'")
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(InputError) as err:
        logs.MLflowLogger(tmp_path, tracking_uri=down).on_train_start(SimpleNamespace(history=[]))
    assert str(err.value) == (f"train.log = ['mlflow']: no MLflow tracking server answers at {down}: start it, or set "
                              f"MLFLOW_TRACKING_URI to one that runs (unset: the local store mlruns/)")
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the quick first try set it for itself only
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://bar")
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "run"), "--set", "data.dataset=ppca", "--set", "train.epochs=1",
                 "--set", "model.likelihood=gaussian-learned", "--set", 'train.log=["mlflow"]']) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (  # after a progress bar
        "pyrovae: error: train.log = ['mlflow']: MLflow does not know the tracking URI 'foo://bar' (its scheme is not "
        "one it supports: file, http, https, databricks, ...): set MLFLOW_TRACKING_URI to one, or unset it (the local "
        "store mlruns/)")


def test_unknown_writer_names_list_the_known_ones():
    with pytest.raises(ConfigError, match="train.log must list names among 'csv', 'mlflow', 'tensorboard'; "
                                          "got 'wandb'"):
        cfgmod.load(None, ['train.log=["csv", "wandb"]'])
    with pytest.raises(ConfigError, match="train.log must be a list of names, got 'csv'"):
        cfgmod.load(None, ['train.log="csv"'])
    assert cfgmod.load(None, [])["train"]["log"] == ["csv"]


@pytest.mark.parametrize("name,module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_a_writer_without_its_package_says_which_extra_to_install(name, module, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, module, None)       # the import fails as if it were not installed
    message = f"train.log = ['{name}'] needs the {module} package: pip install 'pyrovae[{name}]'"
    with pytest.raises(ConfigError) as e:
        logs.build_loggers(["csv", name], tmp_path)
    assert str(e.value) == message
    with pytest.raises(ConfigError, match=r"pip install 'pyrovae\["):
        logs.LOGGERS.build(name, run_dir=tmp_path)
    # the command line refuses it before anything is written
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", "data.dataset=ppca", "--set", f'train.log=["{name}"]']) == 2
    assert capsys.readouterr().err.strip() == f"pyrovae: error: {message}"
    assert not any(out.iterdir())
