"""Burda et al.'s recipe under a wall-clock budget: train, then the standard evaluation.

    PYROVAE_DATA_DIR=../shared/data python benchmarks/burda_recipe.py --name vae --schedule cosine --minutes 90 --epochs 1000
    PYROVAE_DATA_DIR=../shared/data python benchmarks/burda_recipe.py --name iwae5-dreg --schedule cosine --minutes 90 --epochs 400

Trains ``examples/configs/mnist-burda.toml`` (784-200-200-50 tanh, dynamic binarization, Adam
ε = 1e-4, Burda's learning-rate stages shrunk to ``--epochs``, or with ``--schedule cosine`` one
half-cosine from 1e-3 to 1e-5 over them) with ``pyrovae train`` in a child
process, stops it when ``--minutes`` of wall time have passed (SIGKILL: the last finished epoch's
checkpoint is kept, issue 14), then runs ``pyrovae evaluate`` (IWAE, k = 5000, all 10,000 test
images) on that checkpoint, draws the learning curve from metrics.csv, and writes
``benchmarks/results/burda_<name>.json`` with the figures, the wall times and the commands.
``--threads`` sets torch's threads in both children (two runs side by side: one each).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "vae": ["train.elbo=mean-field", "train.batch_size=100"],
    "iwae5-dreg": ["train.elbo=iwae", "train.num_particles=5", "train.gradient=dreg", "train.batch_size=100"],
}


def pyrovae(*args) -> list:
    return [sys.executable, "-m", "pyrovae", *args]


SCHEDULES = {  # --schedule: the config's Burda stages shrunk to --epochs, or one cosine over them
    "burda": [],
    "cosine": ["train.lr_schedule=cosine", "train.lr_schedule_options={ total_epochs = 0, final = 0.01 }"],
}


def train(run: Path, name: str, schedule: str, epochs: int, minutes: float, env: dict) -> dict:
    sets = RECIPES[name] + SCHEDULES[schedule] + [f"train.epochs={epochs}",
                                                  f"train.lr_schedule_options.total_epochs={epochs}"]
    cmd = pyrovae("train", "--config", str(ROOT / "examples/configs/mnist-burda.toml"), "--out", str(run),
                  "--force", *[a for s in sets for a in ("--set", s)])
    start = time.time()
    child = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        child.wait(timeout=minutes * 60)
        stopped = False
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        stopped = True
    return {"command": " ".join(cmd), "wall_seconds": time.time() - start, "stopped_by_budget": stopped,
            "returncode": child.returncode}


def evaluate(run: Path, env: dict) -> dict:
    cmd = pyrovae("evaluate", str(run), "--iw-samples", "5000", "--seed", "0")
    start = time.time()
    subprocess.run(cmd, env=env, check=True)
    return {"command": " ".join(cmd), "wall_seconds": time.time() - start,
            "result": json.loads((run / "evaluation.json").read_text())}


def curve(run: Path, out: Path) -> list:
    from pyrovae.app.plots import plot_curves
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    plot_curves(run / "metrics.csv", out)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", choices=sorted(RECIPES), required=True)
    p.add_argument("--minutes", type=float, default=90.0)
    p.add_argument("--epochs", type=int, required=True, help="the schedule's length (stages shrunk to it)")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default="burda",
                   help="burda: the paper's stages shrunk to --epochs; cosine: 1e-3 → 1e-5 over --epochs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=Path, default=ROOT / "runs")
    a = p.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
    tag = a.name if a.schedule == "burda" else f"{a.name}-{a.schedule}"
    run = a.runs / f"burda-{tag}"
    trained = train(run, a.name, a.schedule, a.epochs, a.minutes, env)
    rows = curve(run, ROOT / f"benchmarks/figures/burda_{tag}_curve.png")
    evaluated = evaluate(run, env)
    result = {"name": a.name, "schedule": a.schedule, "budget_minutes": a.minutes, "threads": a.threads, "epochs_done": len(rows),
              "epochs_planned": a.epochs, "last_row": rows[-1] if rows else None, "train": trained,
              "evaluate": evaluated, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "data": "MNIST, dynamic binarization (test set binarized once, seed 1)"}
    out = ROOT / f"benchmarks/results/burda_{tag}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("name", "epochs_done", "last_row")}, indent=2))
    print("evaluation:", json.dumps(evaluated["result"].get("estimators", evaluated["result"]), indent=2)[:2000])


if __name__ == "__main__":
    main()
