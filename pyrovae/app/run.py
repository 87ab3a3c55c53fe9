"""A run directory: what a config means (data, VAE), training into it, reading it back.

``RUN_DIR`` holds ``config.toml`` (the resolved config), ``checkpoint.pt``, ``metrics.csv``
(one row per epoch), ``summary.json``, the plots, and after ``evaluate``/``compare`` their JSON.
Every file is written atomically (:mod:`pyrovae.files`): a kill leaves the old file or the new one.
A run is never overwritten by accident: training into a directory that holds one needs
``resume`` (continue it) or ``force`` (replace it, removing its old outputs).
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import pyro
import torch

from ..data import OPTION_DEFAULTS, is_image_dataset, load_dataset
from ..data.sources import class_count
from ..errors import CheckpointError, ConfigError, InputError
from ..files import lock_folder, temporary_of, write_text
from ..schema import switch
from ..inference import checkpoint as ckpt
from ..inference import distributed
from ..inference import estimators as est
from ..inference.checkpoint import load_params
from ..inference.device import resolve_device
from ..inference.optim import OptimizerSettings
from ..inference.settings import StepSettings
from ..inference.state import modes, modules_of, preserved_rng
from ..inference.traces import pair_params
from ..inference.callbacks import Callback
from ..inference.train import Term, train
from ..lab.report import bits_per_dim_summary, mean_se
from ..lab.compare import closed_form_problem, score_batches
from ..model import FAMILIES
from ..model.compiled import compiled, ran_compiled
from . import config as cfgmod
from . import logs

#: metrics.csv's writer, now :func:`pyrovae.app.logs.write_metrics` (the ``csv`` logger), also here by its old name
write_metrics = logs.write_metrics
#: what a run writes: a directory holding the first (a checkpoint) holds a run; --force removes them all
RUN_FILES = ("checkpoint.pt", "config.toml", "metrics.csv", "summary.json", "evaluation.json", "compare.json",
             "compare.png", "curves.png", "reconstructions.png", "samples.png", "manifold.png", "latent.png",
             "interpolation.png")
#: below this KL (nats per datapoint) q(z|x) ≈ p(z) for every x: the decoder ignores z
COLLAPSED_KL = 0.1
VARIANTS = {"none": "intensities in [0, 1]", "static": "static binarization (seed 0)",
            "dynamic": "dynamic binarization (test set binarized once, seed 1)"}


def _binarize(cfg: dict) -> str:
    """The config's binarization; real-valued synthetic sets are never binarized."""
    d = cfg["data"]
    return d["binarize"] if is_image_dataset(d["dataset"]) else "none"


def data_variant(cfg: dict) -> str:
    """E.g. ``"mnist, dynamic binarization (test set binarized once, seed 1)"``."""
    d = cfg["data"]
    if not is_image_dataset(d["dataset"]):
        return f"{d['dataset']}, real-valued"
    if d["dataset"] == "arrays" and _binarize(cfg) == "none":  # float arrays are used as stored
        return f"arrays ({d['path']}), values as stored (8-bit integers as k/255)"
    return f"{d['dataset']}, {VARIANTS[_binarize(cfg)]}"


def load_data(cfg: dict, device="cpu"):
    """(train, test) DataSplits (or StreamingSplits) as the config's [data] section describes."""
    d = cfg["data"]
    binarize = _binarize(cfg)
    common = dict(data_dir=d["data_dir"] or None, binarize=binarize, seed=cfg["train"]["seed"], device=device,
                  in_memory=d["in_memory"], workers=d["workers"], **{k: d[k] for k in OPTION_DEFAULTS})
    train_split = load_dataset(d["dataset"], "train", subset=d["subset"], **common)
    test_split = load_dataset(d["dataset"], "test", subset=d["test_subset"], **common)
    return train_split, test_split


def build_model(cfg: dict, input_shape, num_classes: Optional[int] = None):
    """The model of the config's [model] section (``family``: ``FAMILIES``) for data of ``input_shape``.

    The [model] keys a family's constructor names are given to it; ``family_options`` are its own
    and win over the common keys. A family's ``own_options`` (the two-layer VAE's ``hidden`` and
    ``latent_dim``: its ``latent_dims`` and per-layer ``hidden``, Burda's by default) are taken
    from ``family_options`` alone.
    """
    m = cfg["model"]
    context = dict(input_shape=tuple(input_shape), latent_dim=m["latent_dim"], num_classes=num_classes,
                   prior=m["prior"], likelihood=m["likelihood"], guide=m["guide"], hidden=tuple(m["hidden"]),
                   activation=m["activation"] or None, net=m["net"], prior_options=m["prior_options"],
                   likelihood_options=m["likelihood_options"], guide_options=m["guide_options"])
    options = dict(m["family_options"])
    own = set(options) | set(FAMILIES.get(m["family"]).own_options)
    context = {k: v for k, v in context.items() if k not in own and v is not None}  # None: the family's default
    return FAMILIES.build(m["family"], options, **context)


def data_mean(split, chunk: int = 10000) -> torch.Tensor:
    """x̄ [*shape] of a split's stored x (intensities under dynamic binarization: the mean of the
    draws), read ``chunk`` rows at a time (a streaming split is never held whole)."""
    n = len(split)
    total = sum(split.x[a:min(a + chunk, n)].double().sum(0) for a in range(0, n, chunk))
    return (total / n).float()


def num_classes(cfg: dict, split) -> Optional[int]:
    """K for a family built with classes (``labelled``: ``cvae``, ``m2``), from the data's labels; else None."""
    if not FAMILIES.get(cfg["model"]["family"]).labelled:
        return None
    if split.labels is None:
        raise ConfigError(f"model.family = {cfg['model']['family']!r} needs labels, and data set "
                          f"{cfg['data']['dataset']!r} has none")
    return class_count(split.labels, f"the labels of data set {cfg['data']['dataset']!r}")


def labeled_indices(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` indices balanced over the classes (n // K each, the remainder to the first classes),
    drawn with ``torch.Generator().manual_seed(seed)``: the labels M2 keeps."""
    K = int(labels.max()) + 1
    g = torch.Generator().manual_seed(seed)
    picks = []
    for k in range(K):
        members = torch.nonzero(labels.cpu() == k).squeeze(1)
        take = n // K + (k < n % K)
        if take > len(members):
            raise ConfigError(f"data.labeled = {n} needs {take} examples of class {k}, the data have {len(members)}")
        picks.append(members[torch.randperm(len(members), generator=g)[:take]])
    return torch.cat(picks).sort().values


def training_data(cfg: dict, model, train_split, test_split):
    """(data, test_data, extra Terms) for :func:`pyrovae.train`, as the model family takes them
    (``model.arguments``: ``x``, or ``(x, y)`` for a conditional VAE); a ``semi_supervised`` family
    (M2) trains its pair on the unlabeled x and its ``labeled_terms`` on ``data.labeled``
    examples (balanced, seeded), the classifier's weighted by ``train.classifier_weight`` (α, on the
    labeled minibatch's mean as the unlabeled ELBO's mean is weighted 1)."""
    if not model.semi_supervised:
        return (model.arguments(train_split, train_split.labels), model.arguments(test_split, test_split.labels), [])
    n = cfg["data"]["labeled"]
    if not 0 < n < len(train_split):
        raise ConfigError(f"model.family = {cfg['model']['family']!r} needs data.labeled between 1 and the "
                          f"training set's size ({len(train_split)}), got {n}")
    idx = labeled_indices(train_split.labels, n, cfg["train"]["seed"])
    rest = torch.ones(len(train_split), dtype=torch.bool)
    rest[idx] = False
    labeled, unlabeled = train_split.select(idx), train_split.select(rest.nonzero().squeeze(1))
    terms = model.labeled_terms(labeled, labeled.labels, num_unlabeled=len(unlabeled),
                                classifier_weight=cfg["train"]["classifier_weight"])
    extra = [Term(m, g, args, elbo="trace", weight=w) for m, g, args, w in terms]
    return unlabeled, test_split, extra


def read_metrics(path: Path):
    with open(path) as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def run_history(run_dir) -> list:
    """The run's history, a row per epoch: metrics.csv where the run wrote one (``train.log``
    lists ``csv``), else the checkpoint's."""
    path = Path(run_dir) / "metrics.csv"
    return read_metrics(path) if path.is_file() else ckpt.load_training(Path(run_dir) / "checkpoint.pt")["history"]


def saved_config(run_dir, overrides=()) -> dict:
    """The config a run dir's checkpoint was trained with; only ``train.epochs`` may be overridden."""
    others = [o for o in overrides if cfgmod.parse_override(o)[:2] != ("train", "epochs")]
    if others:
        raise cfgmod.ConfigError(f"--resume keeps the run's saved config; only --set train.epochs=N may change it, "
                                 f"got {others}")
    return cfgmod.load(None, overrides, base=ckpt.load_training(Path(run_dir) / "checkpoint.pt").get("config") or {})


def prepare_run_dir(out, *, resume: bool = False, force: bool = False) -> Path:
    """Check that run dir ``out`` may be written, before any work starts, and hold it; return it.

    Refused, with one line naming the path: ``out`` is a file; it holds a run (a checkpoint: a
    folder a failed start left with only ``config.toml`` holds none) and neither ``resume`` nor
    ``force`` is given; ``resume`` without a checkpoint; a folder that cannot be written
    (read-only, no space); a folder another pyrovae process holds (:func:`hold_run_dir`).
    ``force`` removes the old run's outputs (only the files a run writes). Temporary files a
    killed run left behind are removed (only pyrovae's own names, :func:`pyrovae.files.temporary_of`).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a run directory")
    holds_run = (out / "checkpoint.pt").exists()
    if resume and not holds_run:
        raise InputError(f"--resume: {out} holds no checkpoint.pt to continue; train it anew with --force")
    if holds_run and not (resume or force):
        raise InputError(f"{out} already holds a run; pass --resume to continue it or --force to replace it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"cannot write to the run directory {out}: {e.strerror or e}") from None
    hold_run_dir(out)
    for orphan in out.iterdir():
        if temporary_of(orphan.name, RUN_FILES + ("write-test",)):
            orphan.unlink()
    if force and not resume:
        for name in reversed(RUN_FILES):  # the checkpoint last: a kill meanwhile leaves no orphan metrics
            (out / name).unlink(missing_ok=True)
    return out


def hold_run_dir(out) -> None:
    """Hold run dir ``out`` for this process (:func:`pyrovae.files.lock_folder`) until it ends or
    :func:`pyrovae.files.unlock_folder`; InputError if another process holds it."""
    if not lock_folder(out):
        raise InputError(f"{out} is in use by another pyrovae process (training into it): wait for it to end, "
                         f"or train into another --out")


def train_run(cfg: dict, out, *, resume: bool = False, progress: bool = True, write_config: bool = True) -> dict:
    """Train the config's VAE into run dir ``out`` (continuing its checkpoint if ``resume``);
    return the summary (also in summary.json). Call :func:`prepare_run_dir` first.

    Whatever the checkpoint holds, metrics.csv, summary.json and the plots are (re)written from
    it: resuming a run killed after its last checkpoint completes its folder.

    Under torchrun (a process group, :mod:`pyrovae.inference.distributed`) every rank trains its
    shard; rank 0 alone writes the run dir's files, and every rank returns the summary.
    """
    out = Path(out)
    main = distributed.is_main()
    t = cfg["train"]
    logs.check_installed(t["log"])  # before anything is written
    if write_config and main:
        write_text(out / "config.toml", cfgmod.dumps(cfg))
    device = resolve_device(t["device"], "train.device")
    train_split, test_split = load_data(cfg, device)
    if resume:
        check_same_data(out / "checkpoint.pt", train_split, test_split)
    pyro.clear_param_store()
    pyro.set_rng_seed(t["seed"])
    classes = num_classes(cfg, train_split)
    vae = build_model(cfg, train_split.shape, classes)
    if cfg["model"]["init_output_bias"] and not resume:  # on resume the checkpoint's weights replace it
        vae.init_output_bias(data_mean(train_split))
    data, test_data, extra = training_data(cfg, vae, train_split, test_split)
    loggers = logs.build_loggers(t["log"], out, config=cfg, images=_image_hook(vae, test_split)) if main else []
    if main and test_split.labels is not None and vae.extra_scores(test_split.x[:1], test_split.labels[:1]):
        loggers.insert(0, TestScores(vae, test_split, t["batch_size"]))
    start = time.perf_counter()
    history = train(vae.model, vae.guide, data, epochs=t["epochs"], batch_size=t["batch_size"],
                    elbo=t["elbo"], num_particles=t["num_particles"], kl_warmup=t["kl_warmup"],
                    test_data=test_data, device=str(device), extra=extra,
                    optimizer=cfgmod.settings(t, OptimizerSettings), step=cfgmod.settings(t, StepSettings),
                    checkpoint=out / "checkpoint.pt", resume=resume, config=cfg, progress=progress,
                    metadata={"input_shape": list(train_split.shape), "num_classes": classes,
                              "data": data_fingerprints(train_split, test_split)},
                    callbacks=loggers)
    summary = {
        "data": data_variant(cfg), "n_train": len(train_split), "n_test": len(test_split),
        "split": getattr(train_split, "note", "") or "the data set's own train/test split",
        "model": vae.describe(), "parameters": sum(p.numel() for p in vae.parameters()),
        "epochs": len(history), "final": history[-1], "train_seconds_this_session": time.perf_counter() - start,
        "device": str(device), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "processes": distributed.world_size(), "precision": t["precision"],
        "versions": {"torch": torch.__version__, "pyro": pyro.__version__},
        "units": "nats per datapoint (log-probabilities)",
        "warnings": [w for w in [collapse_warning(history[-1]["kl"])] if w],
    }
    if main:
        write_text(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
        _plot_run(vae, out, test_split, history)
        logs.log_outputs(loggers, [out / name for name in RUN_FILES[1:] if (out / name).is_file()])
    distributed.barrier()
    return summary


class TestScores(Callback):
    """The family's own scores on the labeled test set (M2: ``test_accuracy``, the fraction of test
    images whose most probable class under q(y|x) is the label) added to each epoch's history row,
    scored in evaluation mode with the modes found restored afterwards."""

    def __init__(self, vae, test_split, batch_size: int):
        self.vae, self.data, self.batch_size = vae, (test_split.x, test_split.labels), batch_size

    def on_epoch_scored(self, state) -> None:
        x, y = self.data
        with modes(modules_of(self.vae.model, self.vae.guide), False), preserved_rng():
            for name in self.vae.extra_scores(x[:1], y[:1]):
                values = score_batches(lambda a, b, name=name: self.vae.extra_scores(a, b)[name], self.data,
                                       len(x), self.batch_size)
                state.history[-1][f"test_{name}"] = values.mean().item()


def data_fingerprints(train_split, test_split) -> dict:
    """``{"train": ..., "test": ...}``: the splits' fingerprints (:func:`pyrovae.data.sources.fingerprint`),
    which a checkpoint records so a resume can tell that the data changed."""
    return {"train": train_split.fingerprint, "test": test_split.fingerprint}


def check_same_data(checkpoint, train_split, test_split) -> None:
    """InputError unless the splits are the data ``checkpoint`` was trained on (as its recorded
    fingerprints say; a checkpoint without them is not checked): resuming on other data, or on
    another train/test split of it, would mix two experiments in one run."""
    recorded = (ckpt.load_training(checkpoint).get("metadata") or {}).get("data") or {}
    now = data_fingerprints(train_split, test_split)
    changed = [split for split in ("train", "test") if recorded.get(split) and recorded[split] != now[split]]
    if changed:
        raise InputError(f"--resume: the {' and '.join(changed)} data differ from those {checkpoint} was trained on "
                         f"({len(train_split)} train / {len(test_split)} test now; files added, removed or changed, "
                         f"or another split): restore the data, or train anew with --force")


def epochs_done(run_dir) -> int:
    """How many epochs the run's checkpoint holds."""
    return ckpt.load_training(Path(run_dir) / "checkpoint.pt")["epoch"]


def collapse_warning(kl: float) -> Optional[str]:
    """A warning when the final KL says the posterior has collapsed (None otherwise)."""
    if kl >= COLLAPSED_KL:
        return None
    return (f"KL(q(z|x) ‖ p(z)) = {kl:.3g} nats per datapoint: the posterior has collapsed (q(z|x) ≈ p(z) "
            f"for every x, so the decoder ignores z); try a KL warm-up (--set train.kl_warmup=10), more "
            f"epochs or another activation (tanh networks collapse with the VampPrior, see BENCHMARKS.md)")


def _image_hook(vae, test_split):
    """The TensorBoard writer's images each epoch (:func:`logs.image_grids` of 8 test points)."""
    labels = None if test_split.labels is None else test_split.labels[:8]
    return lambda state: logs.image_grids(vae, test_split.x[:8], labels)


def _plot_run(vae, out, test_split, history):
    from .plots import plot_all

    vae.cpu()
    x = test_split.x[:2000].cpu()
    labels = None if test_split.labels is None else test_split.labels[:2000].cpu()
    plot_all(vae, out, x, labels, history)


def load_run(run_dir, device: Optional[str] = "cpu", *, data: bool = True):
    """(config, trained VAE on ``device``, test DataSplit on the CPU) of a run dir; with ``data=False``
    no data file is read (the test split is None) where the checkpoint records the data's shape.
    The test set stays on the CPU: evaluation moves one chunk at a time to the device."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    state = ckpt.load_training(run_dir / "checkpoint.pt")
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{run_dir / 'checkpoint.pt'} holds no run config: it was not written by `pyrovae train`")
    cfg = cfgmod.validate(state["config"])
    device = resolve_device(device)
    metadata = state.get("metadata") or {}
    shape = metadata.get("input_shape")
    test_split = load_data(cfg, "cpu")[1] if data or shape is None else None
    shape = tuple(shape or test_split.shape)
    pyro.clear_param_store()
    vae = build_model(cfg, shape, metadata.get("num_classes")).to(device)
    params = {}
    with pyro.validation_enabled(False):
        for model, guide, probe in vae.checkpoint_pairs():
            params.update(pair_params(model, guide, *probe))
    load_params(params, state["params"])
    return cfg, vae, test_split


#: importance samples in all (test points × k) from which ``evaluate`` compiles by default on a CPU:
#: 2,000 test images at k = 5000, about a minute and a half eager on 2 cores — compiling (10–60 s the
#: first time, cached by torch afterwards) then pays for itself (BENCHMARKS.md, "Evaluation speed")
AUTO_COMPILE_SAMPLES = 10_000_000
#: C++ compilers TorchInductor can build CPU kernels with ($CXX first)
CXX = ("g++", "c++", "clang++")


def should_compile(choice, samples: int, device: torch.device) -> bool:
    """Whether ``evaluate`` runs compiled (:mod:`pyrovae.model.compiled`). ``choice`` True/"on" or
    False/"off" decide; "auto" compiles on a CPU with a C++ compiler when ``samples`` (test points ×
    k) reach :data:`AUTO_COMPILE_SAMPLES` — on a GPU only when asked (not measured there)."""
    mode = switch("compile_networks", choice)
    if mode != "auto":
        return mode == "on"
    compilers = ([os.environ["CXX"]] if os.environ.get("CXX") else []) + list(CXX)
    return (device.type == "cpu" and samples >= AUTO_COMPILE_SAMPLES
            and any(shutil.which(c) for c in compilers))


def evaluate_run(run_dir, *, iw_samples: int = 5000, test_size: int = 0, batch_size: int = 100,
                 device: Optional[str] = "auto", progress: bool = True, seed: int = 0,
                 compile_networks="auto") -> dict:
    """Score the test set (its first ``test_size`` points; 0 = all) with every estimator.

    Per datapoint, in nats: ``mc_elbo`` (r = 1), ``analytic_elbo`` (r = 1), ``closed_form_elbo``
    (where the VAE has one) and ``iwae_bound`` with ``iw_samples`` samples — the standard
    importance-sampled log-likelihood estimate for k = 5000. Each as mean ± standard error; for an
    8-bit likelihood (``likelihood.eight_bit``: the discretized logistic) also in bits per
    dimension, ``result["bits_per_dim"]`` (−log p(x)/(D ln 2), no correction: a probability).
    The draws are seeded by ``seed``: the same seed gives the same numbers; ``result["seconds"]`` is
    each estimator's wall time (the bound's alone is the standard protocol's cost). Compiled
    (``compile_networks``: "auto", the default, for large evaluations on a CPU, :func:`should_compile`;
    True/"on", False/"off") the decoder and the densities run by ``torch.compile``
    (:mod:`pyrovae.model.compiled`: the same draws, float32 rounding apart); ``result["compiled"]``
    says which. The estimators run with the model's modules in evaluation mode (Dropout off,
    BatchNorm on its running statistics). Returns the result; :func:`write_evaluation` saves it.
    """
    for name, value in (("--iw-samples", iw_samples), ("--batch-size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(test_size, bool) or not isinstance(test_size, int) or test_size < 0:
        raise InputError(f"--test-size must be a non-negative integer (0 = all), got {test_size!r}")
    cfg, vae, test = load_run(run_dir, device)
    if test_size > len(test):
        raise InputError(f"--test-size {test_size} is larger than the test set ({len(test)} datapoints)")
    pyro.set_rng_seed(seed)
    x = test.x[: test_size or None]
    y = None if test.labels is None else test.labels[: test_size or None]
    on = next(vae.parameters()).device  # the test set stays on the CPU: each chunk goes to the device
    use_compiled = should_compile(compile_networks, len(x) * iw_samples, on)

    data = vae.arguments(x, y)
    iwae_name = f"iwae_bound(k={iw_samples})"
    fns = {"mc_elbo": lambda *a: est.mc_elbo(vae.model, vae.guide, *a),
           "analytic_elbo": lambda *a: est.analytic_elbo(vae.model, vae.guide, *a),
           iwae_name: lambda *a: est.iwae_bound(vae.model, vae.guide, *a, num_samples=iw_samples)}
    closed_form_note = closed_form_problem(vae)
    if closed_form_note is None:
        fns["closed_form_elbo"] = lambda x, *_: est.closed_form_elbo(vae, x)
    batches = math.ceil(len(x) / batch_size)
    values, seconds = {}, {}
    modules = modules_of(vae.model, vae.guide)  # scored in evaluation mode: Dropout off, BatchNorm's statistics unchanged
    with modes(modules, False), compiled(vae) if use_compiled else nullcontext([]) as parts:
        bar = None
        if progress:
            from tqdm.auto import tqdm
            if use_compiled:
                print("evaluate: compiling the decoder and the densities (torch.compile, once per shape; "
                      "--no-compile to run eagerly)", file=sys.stderr, flush=True)
            first = tuple(t[:batch_size].to(on) for t in data)
            eta = estimate_seconds(lambda k: est.iwae_bound(vae.model, vae.guide, *first, num_samples=k),
                                   iw_samples, batches, warm_up=use_compiled)
            print(f"evaluate: {len(x)} datapoints, k = {iw_samples}: about {format_seconds(eta)} (timed on a "
                  f"probe of the first batch; other work on the machine changes it)", file=sys.stderr, flush=True)
            bar = tqdm(total=batches * len(fns), desc="evaluate", unit="batch")
        for name, fn in fns.items():
            if bar is not None:
                bar.set_description(name)
            start = time.perf_counter()
            values[name] = score_batches(fn, data, len(x), batch_size, device=on, bar=bar,
                                         show=running_bound if name == iwae_name else None)
            seconds[name] = time.perf_counter() - start
        if bar is not None:
            bar.close()
    result = {"run": str(run_dir), "data": data_variant(cfg) + " — test set", "n": len(x),
              "units": "nats per datapoint (log-probabilities)",
              "estimators": {name: mean_se(v) for name, v in values.items()},
              "seconds": {name: round(t, 3) for name, t in seconds.items()}, "compiled": ran_compiled(parts)}
    if vae.likelihood.eight_bit:  # a probability of 8-bit values: also in bits per dimension
        dims = math.prod(vae.input_shape)
        result["bits_per_dim"] = {name: bits_per_dim_summary(v, dims) for name, v in result["estimators"].items()}
    if y is not None:  # the family's own per-datapoint scores (M2: accuracy), in evaluation mode too
        with modes(modules, False), torch.no_grad():
            for name in vae.extra_scores(x[:1].to(on), y[:1]):
                result[name] = mean_se(score_batches(lambda a, b, name=name: vae.extra_scores(a, b)[name], (x, y),
                                                     len(x), batch_size, device=on))
    if closed_form_note:
        result["closed_form_elbo"] = closed_form_note
    result["seed"] = seed
    return result


def running_bound(values: torch.Tensor) -> str:
    """The progress bar's running IWAE bound over the datapoints scored so far."""
    running = mean_se(values)
    return f"log p(x) ≥ {running['mean']:.2f} ± {running['se']:.2f}"


def estimate_seconds(score, k: int, batches: int, probe: int = 250, warm_up: bool = False) -> float:
    """Seconds that ``batches`` batches of ``score(k)`` (the IWAE of one batch with k samples)
    should take: ``score(min(k, probe))`` timed once, without gradients and with the random state
    restored afterwards (the evaluation's draws are those it would have had), scaled by k / probe
    and by the number of batches. An upper estimate: the probe's chunk is small and cold. With
    ``warm_up`` the probe runs once untimed first (compiled networks compile on their first call)."""
    used = min(k, probe)
    with preserved_rng(), torch.no_grad():
        if warm_up:
            score(used)
        start = time.perf_counter()
        score(used)
        return (time.perf_counter() - start) * k / used * batches


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def write_evaluation(run_dir, result: dict) -> Path:
    """RUN_DIR/evaluation.json."""
    return write_text(Path(run_dir) / "evaluation.json", json.dumps(result, indent=2, ensure_ascii=False))
