"""Faults: training killed (SIGKILL) at any moment leaves a run dir that loads, whose metrics agree
with its checkpoint, and that ``--resume`` continues to the numbers of an uninterrupted run.

The kill loop and the checks live in ``benchmarks/kill_resume.py`` (its long form: 30 kills);
these tests import them. A kill leaves the run dir as it was between two file-system steps of the
process (every file is written atomically, and the kernel keeps what was written), so besides
killing at random moments, one test checks the run dir after every single step of a run.
"""
import importlib.util
import os
import signal
import sys
import tempfile
from pathlib import Path

import pytest

from pyrovae.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("kill_resume", ROOT / "benchmarks" / "kill_resume.py")
kill_resume = importlib.util.module_from_spec(_spec)
sys.modules["kill_resume"] = kill_resume  # dataclasses look their module up there
_spec.loader.exec_module(kill_resume)

EPOCHS = 30  # 20 steps each: about 1 s of training between 2-3 s of start-up and 1-2 s of summary and plots


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the config (run dir, Timeline)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    return run_dir, kill_resume.train_uninterrupted(run_dir, EPOCHS)


@pytest.mark.slow
def test_killed_at_random_moments_a_run_resumes_to_the_numbers_of_an_uninterrupted_run(tmp_path, reference):
    lines = []
    try:
        outcome = kill_resume.kill_and_resume(tmp_path, kills=3, epochs=EPOCHS, seed=0, reference=reference[0],
                                              timeline=reference[1], log=lines.append)
    finally:
        print("\n".join(lines))  # where each kill landed, shown when the test fails
    assert outcome.kills == 3 and outcome.runs >= 1


@pytest.mark.slow
def test_resume_completes_a_run_killed_after_its_last_checkpoint(tmp_path, reference):
    """Killed between the last epoch's checkpoint and its metrics.csv (so before summary.json and the
    plots too): the checkpoint holds every epoch, and ``--resume`` must still complete the run dir."""
    kill_before_the_last_metrics = (
        "import os, signal\n"
        "import pyrovae.app.logs as logs\n"
        "write_metrics = logs.write_metrics\n"
        "def killed_before_the_last(path, history):\n"
        f"    if len(history) == {EPOCHS}:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    write_metrics(path, history)\n"
        "logs.write_metrics = killed_before_the_last\n")
    run_dir, log = tmp_path / "run", tmp_path / "train.log"
    proc = kill_resume.launch(run_dir, kill_resume.config_overrides(EPOCHS), log, prelude=kill_before_the_last_metrics)
    assert proc.wait(timeout=600) == -signal.SIGKILL, kill_resume.tail(log)
    state = kill_resume.check_run_dir(run_dir)
    assert (state.epochs, state.metrics) == (EPOCHS, EPOCHS - 1)
    kill_resume.finish(kill_resume.launch(run_dir, ["--resume"], log), log, "--resume")
    kill_resume.compare_with_reference(run_dir, reference[0])


@pytest.mark.slow
def test_no_step_of_a_run_leaves_an_inconsistent_run_dir(tmp_path, monkeypatch):
    """Train, resume to one more epoch, then replace the run with --force, in this process, and check
    the run dir after every file the commands create, rename or remove in it: what a kill there leaves."""
    out = tmp_path / "run"
    steps, problems = [], []

    def observe(step, path):
        if os.path.dirname(os.path.abspath(path)) != str(out):
            return  # e.g. the scratch file check_run_dir writes
        steps.append(step)
        try:
            kill_resume.check_run_dir(out)
        except kill_resume.Inconsistency as e:
            problems.append(f"after {step}: {e}")

    real_mkstemp, real_replace, real_unlink = tempfile.mkstemp, os.replace, os.unlink

    def mkstemp(*args, **kwargs):
        fd, path = real_mkstemp(*args, **kwargs)
        observe(f"creating {Path(path).name}", path)
        return fd, path

    def replace(src, dst, **kwargs):
        real_replace(src, dst, **kwargs)
        observe(f"renaming {Path(src).name} to {Path(dst).name}", dst)

    def unlink(path, **kwargs):
        real_unlink(path, **kwargs)
        if "dir_fd" not in kwargs:
            observe(f"removing {Path(path).name}", path)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "remove", unlink)
    assert main(["train", "--out", str(out), *kill_resume.config_overrides(2)]) == 0
    assert main(["train", "--out", str(out), "--resume", "--set", "train.epochs=3"]) == 0
    assert main(["train", "--out", str(out), "--force", *kill_resume.config_overrides(1)]) == 0
    # the steps were seen: every epoch's checkpoint and metrics, and the removals of --force
    assert sum(step.endswith(" to checkpoint.pt") for step in steps) == 2 + 1 + 1
    assert {"removing checkpoint.pt", "removing metrics.csv", "removing summary.json"} <= set(steps)
    assert not problems, "\n".join(dict.fromkeys(problems))
