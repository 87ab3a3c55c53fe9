"""What a run writes as it trains: ``train.log = ["csv", "tensorboard", "mlflow"]``.

Each writer is a :class:`pyrovae.inference.callbacks.Callback` of :func:`pyrovae.train`, named in
the registry :data:`LOGGERS` (so the config validates the names):

===============  ===================================================================================
``csv``          ``RUN_DIR/metrics.csv`` (the default): a row per epoch, the columns of
                 :data:`METRIC_COLUMNS`, rewritten atomically after every epoch
``tensorboard``  TensorBoard event files in ``RUN_DIR/tensorboard/`` (``torch.utils.tensorboard``;
                 ``pip install 'pyrovae[tensorboard]'``): the history's numbers per epoch and, for
                 image data, a grid of samples and one of reconstructions per epoch.
                 ``tensorboard --logdir RUN_DIR/tensorboard`` shows them
``mlflow``       an MLflow run (``pip install 'pyrovae[mlflow]'``, mlflow-skinny): the config as
                 parameters, the history's numbers per epoch, and at the end the run dir's plots,
                 ``summary.json``, ``metrics.csv`` and ``config.toml`` as artifacts (:func:`log_outputs`). The store is
                 ``$MLFLOW_TRACKING_URI`` when set, else the local folder ``mlruns/`` next to the
                 run dir (``RUN_DIR/../mlruns``, so every run under ``runs/`` shares one store);
                 experiment ``$MLFLOW_EXPERIMENT_NAME``, else ``pyrovae``; the MLflow run is named
                 after the run dir, and ``--resume`` continues it
===============  ===================================================================================

A writer whose package is not installed is refused before anything is written, with the
``pip install`` line that adds it (:func:`check_installed`).
"""
from __future__ import annotations

import contextlib
import csv
import importlib
import importlib.util
import math
import os
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import torch

from ..errors import ConfigError, InputError
from ..files import atomic_write, write_text
from ..inference.callbacks import Callback
from ..registry import Registry

#: the columns of metrics.csv, in order: a prefix of them is the format of runs written before
METRIC_COLUMNS = ["epoch", "train_elbo", "test_elbo", "reconstruction", "kl", "seconds", "lr", "samples_per_second"]
#: the names of the writers, each a Callback factory built with ``LOGGERS.build(name, run_dir=..., ...)``
LOGGERS = Registry("logger", base=Callback)
#: what TensorBoard calls each number of a history row
TENSORBOARD_TAGS = {"train_elbo": "elbo/train", "test_elbo": "elbo/test", "reconstruction": "elbo/reconstruction",
                    "kl": "elbo/kl", "lr": "train/lr", "samples_per_second": "train/samples_per_second",
                    "seconds": "train/seconds_per_epoch"}
#: seconds MLflow waits for the tracking server at the first contact (no retries then)
MLFLOW_FIRST_TIMEOUT = 10
#: the tag a pyrovae MLflow run carries: the run dir's absolute path (how --resume finds the run)
MLFLOW_RUN_DIR_TAG = "pyrovae.run_dir"


# -- the packages the optional writers need ----------------------------------------------------------
def _missing(name: str) -> ConfigError:
    factory = LOGGERS.get(name)
    return ConfigError(f"train.log = [{name!r}] needs the {factory.package} package: "
                       f"pip install 'pyrovae[{factory.extra}]'")


def check_installed(names: Iterable[str]) -> None:
    """ConfigError naming the ``pip install`` line when a writer in ``names`` lacks its package."""
    for name in names:
        package = getattr(LOGGERS.get(name), "package", None)
        if package is not None and importlib.util.find_spec(package) is None:
            raise _missing(name)


def _import(name: str, module: str):
    """``module`` (from a writer's optional package), or the ConfigError of :func:`check_installed`."""
    check_installed([name])
    try:
        return importlib.import_module(module)
    except ImportError:
        raise _missing(name) from None


def build_loggers(names: Iterable[str], run_dir, **context) -> List[Callback]:
    """The writers ``names`` (``train.log``) for ``run_dir``, each given the ``context`` its
    constructor names (``config``, ``images``, ``artifacts``)."""
    names = list(names)
    check_installed(names)
    return [LOGGERS.build(name, run_dir=Path(run_dir), **context) for name in names]


def _finite(row: dict) -> Dict[str, float]:
    """The row's numbers but the epoch, without NaN/Inf (a run without test data has no test ELBO)."""
    return {k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))
            and math.isfinite(v)}


# -- metrics.csv ----------------------------------------------------------------------------------------
def write_metrics(path: Path, history) -> None:
    """metrics.csv: one row per epoch, the columns of ``METRIC_COLUMNS`` and then any other number
    the rows hold (a family's test scores, e.g. M2's ``test_accuracy``) (6 significant digits; a
    number a row lacks, e.g. ``samples_per_second`` of an epoch trained before it was recorded, is nan)."""
    columns = METRIC_COLUMNS + sorted({k for row in history for k in row} - set(METRIC_COLUMNS))
    with atomic_write(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([row[c] if c == "epoch" else f"{row.get(c, float('nan')):.6g}" for c in columns]
                         for row in history)


@LOGGERS.register("csv")
class CSVLogger(Callback):
    """``RUN_DIR/metrics.csv`` rewritten (atomically) from the history after every epoch, and at
    the start of a resumed session, which completes the file of a run killed before writing it."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / "metrics.csv"

    def on_train_start(self, state) -> None:
        if state.history:
            write_metrics(self.path, state.history)

    def on_epoch_end(self, state) -> None:
        write_metrics(self.path, state.history)


# -- TensorBoard -----------------------------------------------------------------------------------------
@LOGGERS.register("tensorboard")
class TensorBoardLogger(Callback):
    """TensorBoard event files in ``RUN_DIR/tensorboard/``, step = epoch: the numbers of each
    history row (tags :data:`TENSORBOARD_TAGS`; NaN left out) and the images ``images(state)``
    returns, ``{tag: tensor [C, H, W] in [0, 1]}`` (e.g. :func:`image_grids`; None: no images).

    Each event file it creates is listed in ``RUN_DIR/tensorboard/.pyrovae-events``. A fresh run
    (empty history) first removes the files listed there (a run it replaces) and nothing else: a
    folder that also holds event files pyrovae did not write is refused (InputError naming one),
    never emptied. A resumed run hides the events of epochs beyond its checkpoint
    (``SummaryWriter(purge_step=...)``).
    """

    package, extra = "tensorboard", "tensorboard"
    #: the list of the event files pyrovae wrote in the folder
    WRITTEN = ".pyrovae-events"

    def __init__(self, run_dir, images: Optional[Callable] = None):
        self.summary_writer = _import("tensorboard", "torch.utils.tensorboard").SummaryWriter
        self.log_dir, self.images, self.writer = Path(run_dir) / "tensorboard", images, None

    def written(self) -> List[str]:
        """The names of the event files pyrovae wrote in the folder (from its list)."""
        try:
            return (self.log_dir / self.WRITTEN).read_text(encoding="utf-8").split()
        except FileNotFoundError:
            return []

    def _events(self) -> List[str]:
        return sorted(p.name for p in self.log_dir.glob("events.out.tfevents.*"))

    def remove_written(self) -> None:
        """Remove the event files of the run being replaced; InputError if others remain."""
        for name in self.written():
            (self.log_dir / name).unlink(missing_ok=True)
        foreign = self._events()
        if foreign:
            raise InputError(f"{self.log_dir} holds event files pyrovae did not write ({foreign[0]}"
                             f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}): move them elsewhere, "
                             f"or train into another --out")
        write_text(self.log_dir / self.WRITTEN, "")

    def on_train_start(self, state) -> None:
        if not state.history:
            self.remove_written()
        before = set(self._events())
        self.writer = self.summary_writer(str(self.log_dir), purge_step=len(state.history) + 1 if state.history
                                          else None)
        new = [name for name in self._events() if name not in before]
        write_text(self.log_dir / self.WRITTEN, "".join(f"{name}\n" for name in self.written() + new))

    def on_epoch_end(self, state) -> None:
        row = state.history[-1]
        for key, value in _finite(row).items():
            self.writer.add_scalar(TENSORBOARD_TAGS.get(key, key), value, row["epoch"])
        for tag, image in (self.images(state) if self.images is not None else {}).items():
            self.writer.add_image(tag, image, row["epoch"], dataformats="CHW")
        self.writer.flush()

    def on_train_end(self, state) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@torch.no_grad()
def image_grids(vae, x, labels=None, n: int = 8, seed: int = 0) -> Dict[str, torch.Tensor]:
    """``{"samples": ..., "reconstructions": ...}``, each a grey grid ``[1, H', W']`` in [0, 1]:
    an n×n grid of decoder means E[x|z], z ~ p(z) (the same draws every call, seeded by ``seed``;
    the caller's random state is left as it was), and the first n of x ``[N, *input_shape]``
    (a row) above their reconstructions E[x | z = μ_φ(x)] (a conditional VAE's with ``labels``).
    Empty when x are not images (:func:`pyrovae.app.plots.as_images`)."""
    from .plots import as_images, image_grid

    if as_images(x[:1], vae.input_shape) is None:
        return {}
    param = next(vae.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        samples = vae.sample(n * n)  # a conditional VAE draws the labels too
    x = x[:n].to(device)
    pairs = torch.cat([x, vae.reconstruct(*vae.arguments(x, None if labels is None else labels[:n].to(device)))])
    grids = {"samples": (samples, n), "reconstructions": (pairs, len(x))}
    return {tag: torch.from_numpy(image_grid(as_images(images, vae.input_shape).clip(0, 1), ncol)).unsqueeze(0)
            for tag, (images, ncol) in grids.items()}


# -- MLflow ------------------------------------------------------------------------------------------------
def flat_params(config: dict, prefix: str = "") -> Dict[str, str]:
    """A nested config as MLflow parameters: ``{"train.lr": "0.001", "model.prior_options.components": "500"}``."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def default_tracking_uri(run_dir) -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else ``file:`` URI of the folder ``mlruns`` next to the run dir."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (Path(run_dir).resolve().parent / "mlruns").as_uri()


@LOGGERS.register("mlflow")
class MLflowLogger(Callback):
    """An MLflow run (through ``mlflow.MlflowClient``, no global active run): ``config`` flattened
    into parameters (:func:`flat_params`), the numbers of each history row as metrics at step =
    epoch (NaN left out); files (the run dir's plots, drawn once training has ended) as artifacts
    by :meth:`log_outputs`. The run is tagged with the run dir (:data:`MLFLOW_RUN_DIR_TAG`); a
    resumed session continues the newest run so tagged and logs the epochs it lacks. It ends
    FINISHED, FAILED (an error) or KILLED (Ctrl-C).

    ``tracking_uri``: default :func:`default_tracking_uri`. MLflow 3 keeps its local file store
    (``file:``) only behind ``MLFLOW_ALLOW_FILE_STORE=true``; for a ``file:`` store this writer
    sets that variable in its process unless the user has.
    """

    package, extra = "mlflow", "mlflow"

    def __init__(self, run_dir, config: Optional[dict] = None, tracking_uri: Optional[str] = None,
                 experiment: Optional[str] = None):
        self.mlflow = _import("mlflow", "mlflow")
        self.run_dir = Path(run_dir).resolve()
        self.config = config or {}
        self.tracking_uri = tracking_uri or default_tracking_uri(self.run_dir)
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "pyrovae"
        self.client, self.run_id, self.logged = None, None, 0

    @contextlib.contextmanager
    def _said(self, first: bool = False):
        """MLflow's errors as one InputError line naming the tracking URI. With ``first`` (the first
        contact) MLflow tries once, waiting :data:`MLFLOW_FIRST_TIMEOUT` seconds, unless the user
        set ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``/``_TIMEOUT``: a server that is down is said at
        once, not after minutes of retries."""
        quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(MLFLOW_FIRST_TIMEOUT)}
        added = [k for k in quick if first and k not in os.environ]
        os.environ.update({k: quick[k] for k in added})
        try:
            yield
        except self.mlflow.exceptions.MlflowException as err:
            raise InputError(mlflow_problem(self.tracking_uri, err)) from None
        finally:
            for k in added:
                os.environ.pop(k, None)

    def on_train_start(self, state) -> None:
        if self.tracking_uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        with self._said(first=True):
            self.client = self.mlflow.MlflowClient(tracking_uri=self.tracking_uri)
            found = self.client.get_experiment_by_name(self.experiment)
        with self._said():
            self._start(state, found)

    def _start(self, state, found) -> None:
        """Create (or, resuming, continue) the MLflow run of experiment ``found`` (None: create it)."""
        experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        run = self._run_to_continue(experiment_id) if state.history else None
        if run is None:
            run = self.client.create_run(experiment_id, run_name=self.run_dir.name,
                                         tags={MLFLOW_RUN_DIR_TAG: str(self.run_dir)})
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
        self.run_id = run.info.run_id
        Param = self.mlflow.entities.Param
        new = [Param(k, v) for k, v in flat_params(self.config).items() if k not in run.data.params]
        self.client.log_batch(self.run_id, params=new)  # a resumed run keeps its parameters (epochs may grow)
        self.logged = max((m.step for m in self.client.get_metric_history(self.run_id, "train_elbo")), default=0)
        for row in state.history:
            self._log_row(row)

    def _run_to_continue(self, experiment_id):
        runs = self.client.search_runs([experiment_id], f"tags.`{MLFLOW_RUN_DIR_TAG}` = '{self.run_dir}'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    def _log_row(self, row: dict) -> None:
        if row["epoch"] <= self.logged:
            return
        now, Metric = int(time.time() * 1000), self.mlflow.entities.Metric
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, row["epoch"]) for k, v in _finite(row).items()])
        self.logged = row["epoch"]

    def on_epoch_end(self, state) -> None:
        with self._said():
            self._log_row(state.history[-1])

    def on_train_end(self, state) -> None:
        if self.client is None or self.run_id is None:
            return
        status = ("FINISHED" if state.error is None else
                  "KILLED" if isinstance(state.error, KeyboardInterrupt) else "FAILED")
        with self._said():
            self.client.set_terminated(self.run_id, status)

    def log_outputs(self, paths: Iterable) -> None:
        """Log the files ``paths`` as artifacts of the run (also after it has ended)."""
        with self._said():
            for path in paths:
                self.client.log_artifact(self.run_id, str(path))


def mlflow_problem(uri: str, err: Exception) -> str:
    """One line for an MLflow error at tracking URI ``uri``: what failed and what to do."""
    text = " ".join(str(err).split())
    if "unsupported URI" in text or "Unsupported URI" in text or "Could not find a registered" in text:
        return (f"train.log = ['mlflow']: MLflow does not know the tracking URI {uri!r} (its scheme is not one it "
                f"supports: file, http, https, databricks, ...): set MLFLOW_TRACKING_URI to one, or unset it "
                f"(the local store mlruns/)")
    if "API request to" in text and ("failed with exception" in text or "Max retries" in text):
        return (f"train.log = ['mlflow']: no MLflow tracking server answers at {uri}: start it, or set "
                f"MLFLOW_TRACKING_URI to one that runs (unset: the local store mlruns/)")
    return f"train.log = ['mlflow']: MLflow at {uri} failed: {text[:300]}"


def log_outputs(loggers: Iterable, paths: Iterable) -> None:
    """Give the files a run wrote after training (summary, plots) to the writers that keep files (MLflow)."""
    paths = list(paths)
    for logger in loggers:
        if callable(getattr(logger, "log_outputs", None)):
            logger.log_outputs(paths)
