"""The ``pyrovae`` command line: train, evaluate, sample, reconstruct, plot, compare, exact.

A user's mistake or a failed run — any :class:`pyrovae.errors.PyrovaeError` (a bad config, missing
or corrupt data, a damaged checkpoint, a diverged training) and any ``OSError`` on the user's
paths — prints one line ``pyrovae: error: ...`` and exits with status 2; ``--debug`` shows the
traceback above that line, and the status stays 2. Anything else is a bug in pyrovae: it is shown with its traceback and a request
to report it (exit status 1). Counts given on the command line are checked by argparse, which
names the flag.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from ..errors import ConfigError, PyrovaeError
from ..files import unlock_folder, write_text

#: what the CLI reports as one line: the user's mistakes and failed runs, and files it could not read or write
USER_ERRORS = (PyrovaeError, OSError)
REPORT = "this is a bug in pyrovae: please report it with the traceback above"


def _count(minimum: int):
    """An argparse type: an integer >= ``minimum`` (argparse's error names the flag)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    parse.__name__ = "count"
    return parse


positive, non_negative = _count(1), _count(0)


def _add_train(sub):
    p = sub.add_parser("train", help="train a VAE from a TOML config into a run dir")
    p.add_argument("--config", type=Path, help="TOML file ([data], [model], [train]); defaults if omitted")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config key, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (with its saved config; "
                        "--set train.epochs=N may extend it)")
    p.add_argument("--force", action="store_true",
                   help="replace the run in --out (its checkpoint, metrics, plots and evaluations are removed)")
    p.add_argument("--data-dir", help="where the data sets are (else $PYROVAE_DATA_DIR, else ~/.cache/pyrovae)")
    p.set_defaults(run=cmd_train)


def _add_run_dir_commands(sub):
    p = sub.add_parser("evaluate", help="score the test set: ELBOs and the k-sample IWAE log-likelihood")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--iw-samples", type=positive, default=5000, help="k for the importance-weighted bound (5000)")
    p.add_argument("--test-size", type=non_negative, default=0, help="first N test points (0 = all)")
    p.add_argument("--batch-size", type=positive, default=100)
    p.add_argument("--seed", type=non_negative, default=0, help="seeds the Monte Carlo draws (same seed, same numbers)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    fast = p.add_mutually_exclusive_group()
    fast.add_argument("--compile", dest="compile", action="store_const", const="on", default="auto",
                      help="run the decoder and the densities compiled by torch.compile (faster for large k; needs a "
                           "C++ compiler on CPU, else runs as without). Default: compiled on a CPU from 10^7 "
                           "importance samples (test points × k) where a C++ compiler is found")
    fast.add_argument("--no-compile", dest="compile", action="store_const", const="off",
                      help="never compile (eager PyTorch throughout)")
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("sample", help="draw x from the model: z ~ p(z), then the decoder mean")
    p.add_argument("run_dir", type=Path)
    p.add_argument("-n", type=positive, default=64)
    p.add_argument("--label", type=non_negative, help="a class to draw (conditional VAE and M2 runs); "
                                                         "default: a row per class")
    p.add_argument("--out", type=Path, help="PNG to write (default RUN_DIR/samples.png)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_sample)

    p = sub.add_parser("reconstruct", help="test images above their reconstructions")
    p.add_argument("run_dir", type=Path)
    p.add_argument("-n", type=positive, default=10)
    p.add_argument("--out", type=Path, help="PNG to write (default RUN_DIR/reconstructions.png)")
    p.set_defaults(run=cmd_reconstruct)

    p = sub.add_parser("plot", help="(re)draw every plot of a run dir")
    p.add_argument("run_dir", type=Path)
    p.set_defaults(run=cmd_plot)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyrovae", description="Variational autoencoders as Pyro programs.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_run_dir_commands(sub)
    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return p


def cmd_train(args):
    import os

    from ..inference import distributed
    from . import config

    if args.data_dir:
        os.environ["PYROVAE_DATA_DIR"] = args.data_dir
    if args.resume and args.config:
        raise ConfigError("--resume continues the run with its saved config; drop --config")
    if args.resume and args.force:
        raise ConfigError("--resume continues the run and --force replaces it: give one of them")
    cfg = config.load(args.config, args.overrides)
    distributed.init_from_env(cfg["train"]["device"])  # under torchrun: join the other ranks
    try:
        with distributed.peers_watched():  # a rank killed or stopped: one line on the others
            _train(args, cfg)
    finally:
        unlock_folder(args.out)  # the run dir prepare_run_dir held
        distributed.shutdown()


def _train(args, cfg):
    """``pyrovae train`` once the config is read; with several ranks, rank 0 prepares the run dir and prints."""
    from ..inference import distributed
    from . import run

    distributed.on_main(run.prepare_run_dir, args.out, resume=args.resume, force=args.force)  # its error: every rank's
    if args.resume:
        cfg = run.saved_config(args.out, args.overrides)
        done = run.epochs_done(args.out)
        if done >= cfg["train"]["epochs"]:
            if distributed.is_main():
                print(f"pyrovae: {args.out} has already trained {done} epoch(s) (train.epochs = "
                      f"{cfg['train']['epochs']}): nothing to do; --set train.epochs=N with N > {done} continues it",
                      file=sys.stderr)
            run.train_run(cfg, args.out, resume=True, progress=False, write_config=False)  # completes its files
            return
    summary = run.train_run(cfg, args.out, resume=args.resume, progress=True)
    if not distributed.is_main():
        return
    final = summary["final"]
    print(f"{summary['data']}: epoch {final['epoch']}, train ELBO {final['train_elbo']:.2f}, "
          f"test ELBO {final['test_elbo']:.2f} nats per datapoint → {args.out}")
    for warning in summary["warnings"]:
        print(f"pyrovae: warning: {warning}", file=sys.stderr)


def cmd_evaluate(args):
    from . import run

    result = run.evaluate_run(args.run_dir, iw_samples=args.iw_samples, test_size=args.test_size,
                              batch_size=args.batch_size, progress=not args.json, seed=args.seed,
                              compile_networks=args.compile)
    if args.json:  # printed before it is saved: a run dir that cannot be written loses nothing computed
        print(json.dumps(result, indent=2, ensure_ascii=False), flush=True)
    else:
        print(f"{result['data']}, n = {result['n']} ({result['units']}), seed {result['seed']}")
        bits = result.get("bits_per_dim", {})  # 8-bit likelihoods: the same in bits per dimension
        for name, v in result["estimators"].items():
            in_bits = f"   {bits[name]['mean']:.4f} ± {bits[name]['se']:.4f} bits/dim" if name in bits else ""
            print(f"  {name:<24} {v['mean']:10.3f} ± {v['se']:.3f}{in_bits}   ({result['seconds'][name]:.1f} s)")
        if "accuracy" in result:
            print(f"  {'test accuracy':<24} {result['accuracy']['mean']:10.4f} ± {result['accuracy']['se']:.4f} "
                  f"(classification error {100 * (1 - result['accuracy']['mean']):.2f}%)")
        if "closed_form_elbo" in result:
            print(f"  closed_form_elbo: {result['closed_form_elbo']}", flush=True)
    run.write_evaluation(args.run_dir, result)


def cmd_sample(args):
    import torch

    from . import plots, run

    _, vae, _ = run.load_run(args.run_dir, data=False)  # no data file is needed to sample
    torch.manual_seed(args.seed)
    out = args.out or args.run_dir / "samples.png"
    if args.label is not None:
        if not vae.labelled:
            raise ConfigError(f"--label draws one class of a model with labels (model.family 'cvae' or 'm2'); "
                              f"{args.run_dir} holds a {type(vae).__name__}")
        if args.label >= vae.num_classes:
            raise ConfigError(f"--label must be a class in 0..{vae.num_classes - 1}, got {args.label}")
    plots.plot_samples(vae, out, n=args.n, seed=args.seed, label=args.label)
    print(out)


def cmd_reconstruct(args):
    from . import plots, run

    _, vae, test = run.load_run(args.run_dir)
    out = args.out or args.run_dir / "reconstructions.png"
    plots.plot_reconstructions(vae, test.x[: args.n], out, n=args.n, labels=test.labels)
    print(out)


def cmd_plot(args):
    from . import plots, run

    _, vae, test = run.load_run(args.run_dir)
    labels = None if test.labels is None else test.labels[:2000]
    for path in plots.plot_all(vae, args.run_dir, test.x[:2000], labels, run.run_history(args.run_dir)):
        print(path)


def _add_compare(sub):
    p = sub.add_parser("compare", help="the estimator lab: MC vs analytic vs closed-form ELBO, IWAE in k, "
                                       "gradient variance of the encoder")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--test-size", type=non_negative, default=1000, help="first N test points (default 1000; 0 = all)")
    p.add_argument("--max-k", type=positive, default=5000, help="largest IWAE k (of 1, 10, 100, 1000, 5000)")
    p.add_argument("--gradient-draws", type=non_negative, default=200,
                   help="draws of the encoder gradient per estimator (0 skips the gradient variance)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=cmd_compare)


def cmd_compare(args):
    from ..lab import compare
    from . import plots, run

    cfg, vae, test = run.load_run(args.run_dir)
    x = test.x[: args.test_size or None]
    labels = None if test.labels is None else test.labels[: args.test_size or None]
    result = compare.compare_estimators(vae, x, labels=labels, max_k=args.max_k, seed=args.seed,
                                        gradient_draws=args.gradient_draws,
                                        progress=not args.json)
    result["data"] = run.data_variant(cfg) + f" — first {len(x)} test points"
    write_text(args.run_dir / "compare.json", json.dumps(result, indent=2, ensure_ascii=False))
    plots.plot_comparison(result, args.run_dir / "compare.png")
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else
          f"{result['data']}\n{compare.format_table(result)}")


def _add_exact(sub):
    p = sub.add_parser("exact", help="models with known log p(x): PPCA against Tipping & Bishop's ML, "
                                     "the notes' toy model against quadrature")
    p.add_argument("--out", type=Path, default=Path("runs/exact"), help="folder for exact.json and toy_gap.png")
    p.add_argument("--epochs", type=int, default=100, help="PPCA training epochs (the toy guide gets a third)")
    p.add_argument("--iw-samples", type=int, default=5000)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_exact)


def cmd_exact(args):
    from ..lab import evidence
    from . import plots

    result = {"ppca": evidence.ppca_experiment(epochs=args.epochs, iw_samples=args.iw_samples),
              "toy": evidence.toy_experiment(epochs=max(1, args.epochs // 3))}
    write_text(args.out / "exact.json", json.dumps(result, indent=2, ensure_ascii=False))
    plots.plot_toy_gap(result["toy"], args.out / "toy_gap.png")
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    print(evidence.format_result(result))


_EXTRA_COMMANDS = [_add_compare, _add_exact]


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("pyrovae: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if args.debug:
            traceback.print_exc()
        message = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.filename}: {e.strerror or e}"
        # one write, newline included: under torchrun every rank says it, and with PYTHONUNBUFFERED a
        # print's message and its newline are two writes that another rank's line can fall between
        sys.stderr.write(f"pyrovae: error: {' '.join(message.split())}\n")
        sys.stderr.flush()
        return 2
    except Exception:
        if args.debug:
            raise
        traceback.print_exc()
        print(f"pyrovae: {REPORT}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
