"""The supervised-only baseline beside M2: M2's classifier q(y|x), trained on the labeled images alone.

The config's data (examples/configs/mnist-m2.toml: MNIST, dynamic binarization, the same
``data.labeled`` images drawn with ``train.seed`` as ``pyrovae train`` keeps) and the config's
classifier network (784-500-10, softplus), trained by ``pyrovae.train`` on its own Pyro pair —
``classifier_model`` observes y under q(y|x), so the ELBO maximised is Σ log q(y|x), the
log-likelihood of the labels — with the config's Adam settings, one minibatch of all the labels
per epoch. Every ``--every`` epochs it scores all 10,000 test images (the most probable class under
q(y|x), evaluation mode) and prints a JSON line; the summary (best and last test error) goes to
``--out``.

    python benchmarks/m2_supervised_baseline.py --epochs 3000 --out benchmarks/results/m2_supervised_baseline.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro
import torch

import pyrovae
from pyrovae.app import config as cfgmod
from pyrovae.app.run import build_model, labeled_indices, load_data, num_classes
from pyrovae.inference.callbacks import Callback


class TestError(Callback):
    """Every ``every`` epochs: the test error of q(y|x)'s most probable class, printed and kept."""

    def __init__(self, vae, test, every: int):
        self.vae, self.test, self.every, self.rows, self.start = vae, test, every, [], time.perf_counter()

    def on_epoch_end(self, state) -> None:
        if state.epoch % self.every and state.epoch != state.epochs:
            return
        self.vae.eval()
        error = (self.vae.predict(self.test.x) != self.test.labels).double().mean().item()
        self.vae.train()
        row = {"epoch": state.epoch, "log_q_labels": state.history[-1]["train_elbo"], "test_error": error,
               "seconds": round(time.perf_counter() - self.start, 1)}
        self.rows.append(row)
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/configs/mnist-m2.toml")
    parser.add_argument("--epochs", type=int, default=3000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cfg = cfgmod.load(Path(args.config))
    train_split, test_split = load_data(cfg)
    torch.manual_seed(cfg["train"]["seed"])
    vae = build_model(cfg, train_split.shape, num_classes(cfg, train_split))
    labeled = train_split.select(labeled_indices(train_split.labels, cfg["data"]["labeled"], cfg["train"]["seed"]))
    scores = TestError(vae, test_split, args.every)
    pyrovae.train(vae.classifier_model, vae.classifier_guide, (labeled, labeled.labels), epochs=args.epochs,
                  batch_size=len(labeled), lr=cfg["train"]["lr"], progress=False, callbacks=[scores])
    errors = [r["test_error"] for r in scores.rows]
    summary = {"config": args.config, "labels": len(labeled), "data": "MNIST, dynamic binarization; all 10,000 test images",
               "network": "q(y|x) of the config: " + str(vae.classifier), "epochs": args.epochs,
               "last_test_error": errors[-1], "best_test_error": min(errors), "curve": scores.rows,
               "versions": {"torch": torch.__version__, "pyro": pyro.__version__}}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(f"supervised only, {len(labeled)} labels: test error {100 * errors[-1]:.2f}% after {args.epochs} epochs "
          f"(best {100 * min(errors):.2f}%)")


if __name__ == "__main__":
    main()
