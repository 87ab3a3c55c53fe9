"""Kill ``pyrovae train`` (SIGKILL) at random moments, resume it each time, and check the run dir.

First an uninterrupted run of the config trains into ``reference/``; its timeline (when its first
checkpoint appears, when it exits) sets when to kill. Then ``pyrovae train`` processes are started
and killed one after the other, each after a delay drawn uniformly between half the time to the
first checkpoint and the whole run's time: the kills fall into the start-up, the epochs (between
and during the checkpoint and metrics writes) and the final summary and plots. Every third kill
then waits on for the next atomic write to begin (a new ``.*.tmp`` file) and kills during it.
The delays come from ``random.Random(seed)``: one seed, one sequence of choices; where each kill
lands still depends on the machine's speed, which is the point.

After every kill, :func:`check_run_dir` checks what a kill may leave:

* ``checkpoint.pt``, where there is one, loads (:func:`pyrovae.inference.checkpoint.load_training`)
  and its history holds the epochs 1..k;
* ``metrics.csv`` is a prefix of what ``write_metrics`` writes for that history (the same epochs
  and values, 6 significant digits): it never claims an epoch the checkpoint lacks, and there is
  none without a checkpoint; ``summary.json`` claims no epoch past the checkpoint either;
* ``config.toml`` and ``summary.json`` parse, the plots are whole PNGs;
* the only hidden files are the temporary files of atomic writes (``.*.tmp``), and a process that
  got as far as training has removed those it found.

The next process continues the run (``--resume``), or trains it anew (``--force``) when the kill
came before the first checkpoint. A process that ends by itself (one the kill came too late for,
or the last one) completes the run: :func:`compare_with_reference` then wants the files of the
uninterrupted run, no hidden file, the same config.toml, the same metrics.csv but for the
``seconds`` column, and a checkpoint equal to the reference's bit for bit (parameters, optimizer
and random states, history but for ``seconds``). Later kills go on in a fresh run dir.

    python benchmarks/kill_resume.py [--kills 30] [--epochs 60] [--seed 0] [--keep DIR]

One line per kill, then a verdict; exit status 1 on any inconsistency. ``tests/test_faults.py``
runs a short form (3 kills) in ``make test`` and imports these functions.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable, List, Optional

import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from pyrovae.app.run import RUN_FILES, write_metrics
from pyrovae.errors import CheckpointError
from pyrovae.inference.checkpoint import load_training

#: temporary files of atomic writes: the next run removes them (``prepare_run_dir``)
TEMPORARY = ".*.tmp"
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
#: ignored when a finished run is compared with the uninterrupted one: wall-clock times
TIMES = ("seconds", "samples_per_second", "train_seconds_this_session")


def config_overrides(epochs: int) -> List[str]:
    """``--set`` arguments of a small, fast run: PPCA data (synthetic, no files), 20 steps an epoch."""
    sets = ["data.dataset=ppca", "data.subset=1000", "data.test_subset=200", "model.latent_dim=2",
            "model.hidden=[32]", "model.likelihood=gaussian", "train.batch_size=50", f"train.epochs={epochs}",
            "train.device=cpu", "train.seed=0"]
    return [arg for s in sets for arg in ("--set", s)]


class Inconsistency(AssertionError):
    """What a run dir holds contradicts itself, or a finished run differs from the uninterrupted one."""


# -- processes ---------------------------------------------------------------------------------------
def launch(run_dir: Path, args: List[str], log: Path, prelude: Optional[str] = None) -> subprocess.Popen:
    """Start ``pyrovae train --out run_dir *args`` (one CPU thread), its output appended to ``log``.

    ``prelude``: Python run in that process before the command line (to patch in a fault).
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if prelude is None:
        command = [sys.executable, "-m", "pyrovae"]
    else:
        command = [sys.executable, "-c", f"{prelude}\nimport sys\nfrom pyrovae.app.cli import main\n"
                                         f"sys.exit(main(sys.argv[1:]))"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"$ pyrovae train --out {run_dir} {' '.join(args)}\n".encode())
        out.flush()
        return subprocess.Popen(command + ["train", "--out", str(run_dir), *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def tail(log: Path, chars: int = 1500) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return text[-chars:].replace("\r", "\n")


def finish(proc: subprocess.Popen, log: Path, what: str, timeout: float = 600) -> None:
    """Wait for ``proc``; Inconsistency, with its output, unless it succeeds."""
    rc = proc.wait(timeout=timeout)
    if rc != 0:
        raise Inconsistency(f"{what} exited with status {rc}:\n{tail(log)}")


def temporary_files(run_dir: Path) -> set:
    try:
        return {n for n in os.listdir(run_dir) if fnmatch(n, TEMPORARY)}
    except FileNotFoundError:
        return set()


def kill_after(proc: subprocess.Popen, run_dir: Path, delay: float, on_write: bool = False) -> int:
    """SIGKILL ``proc`` ``delay`` seconds after now, or, ``on_write``, at the first atomic write
    that begins after that (a new temporary file in ``run_dir``); its exit status (−9 when killed,
    another where it ended first)."""
    old = temporary_files(run_dir)
    try:
        return proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        pass
    while on_write and proc.poll() is None and not temporary_files(run_dir) - old:
        time.sleep(0.0005)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    return proc.wait()


@dataclass
class Timeline:
    """Seconds from the start of an uninterrupted run to its first checkpoint and to its exit."""
    first_checkpoint: float
    exit: float


def train_uninterrupted(run_dir: Path, epochs: int, log: Optional[Path] = None) -> Timeline:
    """Train the config into ``run_dir`` in one process; when its first checkpoint appeared and when it ended."""
    log = log or run_dir.parent / f"{run_dir.name}.log"
    start = time.perf_counter()
    proc = launch(run_dir, config_overrides(epochs), log)
    first = None
    while proc.poll() is None:
        if first is None and (run_dir / "checkpoint.pt").exists():
            first = time.perf_counter() - start
        time.sleep(0.002)
    finish(proc, log, "the uninterrupted run")
    end = time.perf_counter() - start
    return Timeline(first or end, end)


# -- what a run dir holds --------------------------------------------------------------------------
@dataclass
class State:
    """What :func:`check_run_dir` found: epochs in the checkpoint, rows of metrics.csv, temporary files."""
    epochs: int = 0
    metrics: int = 0
    temporary: set = field(default_factory=set)


def check_run_dir(run_dir: Path) -> State:
    """Check that ``run_dir`` is what a kill may leave (the module's doc); its State, or Inconsistency."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return State()
    names = sorted(os.listdir(run_dir))
    problems = []
    temporary = {n for n in names if fnmatch(n, TEMPORARY)}
    strays = [n for n in names if n not in RUN_FILES and n not in temporary]
    if strays:
        problems.append(f"files that are neither a run's nor a temporary file the next run removes: {strays}")
    history = []
    if "checkpoint.pt" in names:
        try:
            state = load_training(run_dir / "checkpoint.pt")
        except CheckpointError as e:
            problems.append(f"checkpoint.pt does not load: {e}")
        else:
            history = state["history"]
            epochs = [row.get("epoch") for row in history]
            if epochs != list(range(1, len(history) + 1)) or state["epoch"] != len(history):
                problems.append(f"checkpoint.pt says epoch {state['epoch']} but its history holds epochs {epochs}")
    if "metrics.csv" in names:
        problems += _metrics_problems(run_dir / "metrics.csv", history, "checkpoint.pt" in names)
    if "summary.json" in names:
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
            if summary["epochs"] > len(history):
                problems.append(f"summary.json claims {summary['epochs']} epochs, the checkpoint holds {len(history)}")
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"summary.json is not whole ({type(e).__name__}: {e})")
    if "config.toml" in names:
        try:
            tomllib.loads((run_dir / "config.toml").read_text())
        except (ValueError, UnicodeDecodeError) as e:
            problems.append(f"config.toml is not whole ({e})")
    for name in names:
        if name.endswith(".png") and name in RUN_FILES:
            data = (run_dir / name).read_bytes()
            if not (data.startswith(PNG_START) and data.endswith(PNG_END)):
                problems.append(f"{name} is not a whole PNG ({len(data)} bytes)")
    if problems:
        raise Inconsistency(f"{run_dir}: " + "; ".join(problems))
    rows = len((run_dir / "metrics.csv").read_text().splitlines()) - 1 if "metrics.csv" in names else 0
    return State(len(history), rows, temporary)


def _metrics_problems(path: Path, history: list, has_checkpoint: bool) -> List[str]:
    """metrics.csv against the checkpoint's history: the first lines of what write_metrics writes for it."""
    lines = path.read_text().splitlines()
    if not has_checkpoint:
        return [f"metrics.csv ({len(lines) - 1} epochs) but no checkpoint.pt"]
    with tempfile.TemporaryDirectory() as scratch:
        expected = Path(scratch) / "metrics.csv"
        write_metrics(expected, history)
        expected = expected.read_text().splitlines()
    if len(lines) > len(expected):
        return [f"metrics.csv claims {len(lines) - 1} epochs, checkpoint.pt holds {len(history)}"]
    if lines != expected[: len(lines)]:
        wrong = next(i for i, (a, b) in enumerate(zip(lines, expected)) if a != b)
        return [f"metrics.csv line {wrong + 1} is {lines[wrong]!r}, the checkpoint's history says {expected[wrong]!r}"]
    return []


def _differences(a, b, where: str = "") -> List[str]:
    """Where two checkpoints (nested dicts, lists, tensors, numbers) differ, wall-clock times aside."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where or 'top'}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a if k not in TIMES for d in _differences(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: {len(a)} against {len(b)} entries"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [f"{where}: tensors differ"]
    return [] if a == b else [f"{where}: {a!r} against {b!r}"]


def compare_with_reference(run_dir: Path, reference: Path) -> None:
    """Inconsistency unless finished run ``run_dir`` is ``reference`` (the uninterrupted run) to the bit."""
    check_run_dir(run_dir)
    names, expected = sorted(os.listdir(run_dir)), sorted(os.listdir(reference))
    problems = [] if names == expected else [f"it holds {names}, the uninterrupted run {expected}"]
    if "config.toml" in names and (run_dir / "config.toml").read_text() != (reference / "config.toml").read_text():
        problems.append("config.toml differs")
    if "metrics.csv" in names:
        ours, theirs = ([{k: v for k, v in row.items() if k not in TIMES}
                         for row in csv.DictReader((d / "metrics.csv").read_text().splitlines())]
                        for d in (run_dir, reference))
        if ours != theirs:
            problems.append(f"metrics.csv differs ({len(ours)} rows against {len(theirs)}): "
                            f"{ours[-1:]} against {theirs[-1:]}")
    if "checkpoint.pt" in names:
        diff = _differences(load_training(run_dir / "checkpoint.pt"), load_training(reference / "checkpoint.pt"))
        if diff:
            problems.append(f"checkpoint.pt differs at {', '.join(diff[:5])}" + (" ..." if len(diff) > 5 else ""))
    if "summary.json" in names:
        diff = _differences(json.loads((run_dir / "summary.json").read_text()),
                            json.loads((reference / "summary.json").read_text()))
        if diff:
            problems.append(f"summary.json differs at {', '.join(diff[:5])}")
    if problems:
        raise Inconsistency(f"{run_dir}, finished, is not the uninterrupted run: " + "; ".join(problems))


# -- the kill loop -------------------------------------------------------------------------------------
@dataclass
class Outcome:
    kills: int = 0
    runs: int = 0                                  # runs completed (each compared with the reference)
    landed: dict = field(default_factory=dict)     # where the kills landed: counts


def where(before: State, after: State, epochs: int, new_temporary: set) -> str:
    """Where a kill landed, from what the run dir held before the process and after the kill."""
    if after.epochs == 0:
        what = "before the first checkpoint"
    elif after.epochs >= epochs:
        what = "after the last epoch"
    elif after.epochs == before.epochs:
        what = "before its first epoch"
    else:
        what = "in training"
    if new_temporary:
        what += ", during a write"
    return what


def kill_and_resume(workdir: Path, *, kills: int = 3, epochs: int = 30, seed: int = 0,
                    reference: Optional[Path] = None, timeline: Optional[Timeline] = None,
                    log: Callable[[str], None] = print) -> Outcome:
    """Kill ``pyrovae train`` ``kills`` times, resuming it after each kill, then let it finish;
    check the run dir after every kill and every finished run against the uninterrupted one
    (``reference``, trained here first unless given with its ``timeline``). Inconsistency on the
    first problem."""
    workdir = Path(workdir)
    if (reference is None) != (timeline is None):
        raise ValueError("give both the reference run dir and its timeline, or neither")
    if reference is None:
        reference = workdir / "reference"
        timeline = train_uninterrupted(reference, epochs, workdir / "logs" / "reference.log")
    log(f"uninterrupted run: first checkpoint after {timeline.first_checkpoint:.2f} s, "
        f"exit after {timeline.exit:.2f} s ({epochs} epochs)")
    rng = random.Random(seed)
    low, high = timeline.first_checkpoint / 2, timeline.exit
    outcome, processes, state, killed_here = Outcome(), 0, State(), False
    run_dir = workdir / "run-1"
    while outcome.kills < kills:
        if processes >= 4 * kills:
            raise Inconsistency(f"{processes} processes for {outcome.kills} kills: the runs end before the kills")
        processes += 1
        mode = "--resume" if state.epochs else "--force"
        delay, on_write = rng.uniform(low, high), outcome.kills % 3 == 1
        logfile = workdir / "logs" / f"{processes:03d}.log"
        proc = launch(run_dir, [mode] + (config_overrides(epochs) if mode == "--force" else []), logfile)
        rc = kill_after(proc, run_dir, delay, on_write)
        if rc == 0:  # it ended before the kill: the run is complete
            compare_with_reference(run_dir, reference)
            outcome.runs += 1
            log(f"  {mode:<8} after {delay:5.2f} s{' + a write' if on_write else '':<11}: ended by itself, "
                f"equal to the uninterrupted run")
            run_dir, state, killed_here = workdir / f"run-{outcome.runs + 1}", State(), False
            continue
        if rc != -signal.SIGKILL:
            raise Inconsistency(f"{mode} in {run_dir} exited with status {rc}:\n{tail(logfile)}")
        outcome.kills, killed_here = outcome.kills + 1, True
        after = check_run_dir(run_dir)
        stale = state.temporary & after.temporary
        if stale and after.epochs > state.epochs:
            raise Inconsistency(f"{run_dir}: the temporary files {sorted(stale)} of an earlier kill outlived a run "
                                f"that went on training")
        landed = where(state, after, epochs, after.temporary - state.temporary)
        outcome.landed[landed] = outcome.landed.get(landed, 0) + 1
        log(f"kill {outcome.kills:>3}/{kills}: {mode:<8} after {delay:5.2f} s{' + a write' if on_write else '':<11}: "
            f"{landed:<38} checkpoint {after.epochs:>3}, metrics {after.metrics:>3}, "
            f"temporary files {len(after.temporary)}: consistent")
        state = after
    if killed_here:
        mode = "--resume" if state.epochs else "--force"
        logfile = workdir / "logs" / "last.log"
        finish(launch(run_dir, [mode] + (config_overrides(epochs) if mode == "--force" else []), logfile),
               logfile, f"the last {mode} in {run_dir}")
        compare_with_reference(run_dir, reference)
        outcome.runs += 1
        log(f"  {mode:<8} to the end: equal to the uninterrupted run")
    return outcome


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=30)
    p.add_argument("--epochs", type=int, default=60, help="epochs of the run (20 steps each)")
    p.add_argument("--seed", type=int, default=0, help="seeds the delays and the kinds of kill")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it (else a temporary folder)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kill-resume-") as scratch:
        workdir = args.keep or Path(scratch)
        start = time.perf_counter()
        try:
            outcome = kill_and_resume(workdir, kills=args.kills, epochs=args.epochs, seed=args.seed,
                                      log=lambda line: print(line, flush=True))
        except Inconsistency as e:
            print(f"FAIL: {e}", flush=True)
            return 1
    landed = "; ".join(f"{what}: {n}" for what, n in sorted(outcome.landed.items()))
    print(f"PASS: {outcome.kills} kills ({landed}); {outcome.runs} run(s) finished, each equal to the uninterrupted "
          f"one; {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
