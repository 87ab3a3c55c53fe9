"""M2's 90-minute runs side by side: test error against wall-clock minutes, one figure.

Reads pyrovae's run dir (its metrics.csv: ``seconds`` per epoch, ``test_accuracy`` on all 10,000
test images), Pyro's ``examples/vae/ss_vae_M2.py`` log (one line per epoch with its test accuracy)
with the times its lines appeared (``TIME LINES`` per line, written by a watcher every 5 s; the
example logs no times; ``--ours-times`` likewise for metrics.csv's rows), and the supervised-only baseline's JSON
(benchmarks/m2_supervised_baseline.py), and draws benchmarks/figures/m2_90min.png.

    python benchmarks/m2_curves.py --run RUN --pyro-log LOG --pyro-times TIMES --pyro-start ISO \
        --baseline benchmarks/results/m2_supervised_baseline.json --out benchmarks/figures/m2_90min.png
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import re
from pathlib import Path

from matplotlib.figure import Figure


def stamps(times: Path):
    """The watcher's records, ``TIME ROWS`` a line: [(time, rows written by then)]."""
    records = [line.split() for line in times.read_text().splitlines()]
    return [(datetime.datetime.fromisoformat(r[0]), int(r[-1])) for r in records]


def ours(run: Path, times=None, start=None):
    """(minutes, test error) after each epoch of a pyrovae run: wall-clock minutes since ``start``
    where the watcher's ``times`` saw the row as the newest, else the sum of metrics.csv's
    ``seconds`` (an epoch's steps and evaluation, without the test scores and the checkpoint)."""
    minutes, errors, total = [], [], 0.0
    seen = stamps(times) if times else []
    t0 = datetime.datetime.fromisoformat(start) if start else None
    with open(run / "metrics.csv") as f:
        for i, row in enumerate(csv.DictReader(f)):
            total += float(row["seconds"])
            when = next((t for t, n in seen if n == i + 1), None)  # rows seen together: only the last is timed
            minutes.append((when - t0).total_seconds() / 60 if when and t0 else total / 60)
            errors.append(1 - float(row["test_accuracy"]))
    return minutes, errors


def pyros(log: Path, times: Path, start: str):
    """(minutes, test error) after each epoch of Pyro's example: epoch i's line is line i + 1 of the
    log, timed by the first watcher record that counts at least i + 1 lines."""
    lines = [ln for ln in log.read_text().splitlines() if " epoch: " in ln]
    accuracies = [float(re.search(r"test accuracy ([0-9.]+)", ln).group(1)) for ln in lines]
    t0, seen = datetime.datetime.fromisoformat(start), stamps(times)
    minutes = []
    for i in range(len(accuracies)):
        when = next(t for t, n in seen if n >= i + 1)
        minutes.append((when - t0).total_seconds() / 60)
    return minutes, [1 - a for a in accuracies]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--pyro-log", type=Path, required=True)
    p.add_argument("--pyro-times", type=Path, required=True)
    p.add_argument("--pyro-start", required=True)
    p.add_argument("--ours-times", type=Path, help="the watcher's records of metrics.csv's rows")
    p.add_argument("--ours-start", help="when pyrovae's run started (ISO time)")
    p.add_argument("--baseline", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("benchmarks/figures/m2_90min.png"))
    args = p.parse_args()
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    m, e = ours(args.run, args.ours_times, args.ours_start)
    ax.plot(m, [100 * v for v in e], label="pyrovae M2, examples/configs/mnist-m2.toml")
    m, e = pyros(args.pyro_log, args.pyro_times, args.pyro_start)
    ax.plot(m, [100 * v for v in e], label="Pyro examples/vae/ss_vae_M2.py -sup 100 --aux-loss")
    base = json.loads(args.baseline.read_text())
    ax.axhline(100 * base["last_test_error"], color="grey", ls="--",
               label=f"q(y|x) on the {base['labels']} labels alone")
    ax.axhline(11.97, color="black", ls=":", label="Kingma et al. (2014) M2, 100 labels")
    ax.set_xlabel("wall-clock minutes (2-core CPU, one thread each, run side by side)")
    ax.set_ylabel("test error, 10,000 images (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(args.out)


if __name__ == "__main__":
    main()
