"""Can a training step of a Pyro model/guide pair be compiled? (issue 15 §3)

At Burda's batch size (20) a step of ``pyrovae.train`` is dominated by Pyro's per-step Python
machinery (messengers, traces, ``pyro.module``'s parameter registration), not by arithmetic. The
two ways torch offers to compile a step, and pyrovae's two lean steps, tried on the user pair of
``benchmarks/train_throughput.py`` (Pyro's VAE tutorial, 784-400-50, mean-field ELBO), one
thread, in one process, each method (its own network and
parameters) timed in alternating rounds of ``--steps`` Adam steps:

* ``eager``: ``pyrovae``'s ``MeanField_ELBO.loss_and_grads`` (what ``pyrovae.train`` runs);
* ``pyro``: Pyro's ``TraceMeanField_ELBO.loss_and_grads``;
* ``pyro-jit``: Pyro's ``JitTraceMeanField_ELBO`` (``torch.jit.trace`` of the loss: TorchScript);
* ``torch.compile``: ``torch.compile`` of ``MeanField_ELBO.differentiable_loss`` (TorchDynamo +
  Inductor), then ``backward``; its compile time and Dynamo's graph-break count are printed;
* ``fast-step``: :class:`pyrovae.inference.faststep.FastStep` — the pair
  under one recording messenger in place of Pyro's trace + replay messengers, no ``Trace``
  objects, the same mean-field sum to the last bit (checked against ``MeanField_ELBO`` at its
  first, untimed step; the benchmark stops if that check fails);
* ``traced``: what the trainer runs for pyrovae's models (and for a user's pair with
  ``traced_step="on"``), :class:`pyrovae.inference.tracedstep.TracedStep` — that fast step recorded
  once with ``make_fx`` and replayed as a graph of ATen operations (checked against the fast step
  at its first use; the benchmark stops if tracing turns off).

Reported: the median CPU milliseconds per step (the process's own time: the steadier figure on a
shared machine) after one warm-up round, and the ratio to ``eager``.

    python benchmarks/compiled_step.py [--batch 20 100] [--steps 100] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import pyro
import torch
from pyro.infer import JitTraceMeanField_ELBO, TraceMeanField_ELBO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import TutorialVAE  # noqa: E402

from pyrovae.inference.elbos import MeanField_ELBO  # noqa: E402
from pyrovae.inference.faststep import FastStep  # noqa: E402
from pyrovae.inference.tracedstep import TracedStep  # noqa: E402


def stepper(method: str, x: torch.Tensor, batch: int):
    """(a function running one Adam step on minibatch i, seconds of the first two calls (compiling), the
    param store's state)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = TutorialVAE()
    elbo = {"eager": MeanField_ELBO, "pyro": TraceMeanField_ELBO, "pyro-jit": JitTraceMeanField_ELBO,
            "torch.compile": MeanField_ELBO, "fast-step": MeanField_ELBO, "traced": MeanField_ELBO}[method]()
    start = time.perf_counter()
    elbo.loss_and_grads(vae.model, vae.guide, x[:batch])  # registers the parameters (and traces the JIT's loss)
    opt = torch.optim.Adam([p for _, p in pyro.get_param_store().named_parameters()], lr=1e-3)
    opt.zero_grad(set_to_none=True)
    if method == "torch.compile":
        compiled = torch.compile(lambda xb: elbo.differentiable_loss(vae.model, vae.guide, xb))

        def loss_and_grads(xb):
            compiled(xb).backward()
    elif method in ("fast-step", "traced"):
        fast = FastStep.for_elbo(elbo) if method == "fast-step" else TracedStep(FastStep.for_elbo(elbo))

        def loss_and_grads(xb):
            if fast.loss_and_grads(vae.model, vae.guide, (xb,), {}) is None or not getattr(fast, "tracing", True):
                why = fast.why_off if isinstance(fast, FastStep) else fast.why_not or fast.fast.why_off
                raise RuntimeError(f"the {method} step is off for this pair: {why}")
    else:
        def loss_and_grads(xb):
            elbo.loss_and_grads(vae.model, vae.guide, xb)

    def step(i: int):
        start = (i * batch) % (len(x) - batch)
        with pyro.validation_enabled(False):
            loss_and_grads(x[start:start + batch])
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(0)  # compiles torch.compile's loss
    return step, time.perf_counter() - start, pyro.get_param_store().get_state()


def use_store(state) -> None:
    """Make the param store hold one method's parameters (each method has its own network)."""
    pyro.clear_param_store()
    pyro.get_param_store().set_state(state)


def graph_breaks(x: torch.Tensor, batch: int) -> int:
    """Dynamo's graph-break count for the compiled loss (``torch._dynamo.explain``)."""
    pyro.clear_param_store()
    vae, elbo = TutorialVAE(), MeanField_ELBO()
    with pyro.validation_enabled(False):
        explained = torch._dynamo.explain(lambda xb: elbo.differentiable_loss(vae.model, vae.guide, xb))(x[:batch])
    return explained.graph_break_count


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, nargs="+", default=[20, 100])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=["eager", "pyro", "pyro-jit", "torch.compile", "fast-step", "traced"])
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    x = torch.rand(4000, 784, generator=torch.Generator().manual_seed(0)).bernoulli()
    print(f"# torch {torch.__version__}, pyro {pyro.__version__}, 1 thread; CPU ms per step, median of "
          f"{a.rounds} rounds of {a.steps} steps (after a warm-up round)")
    for batch in a.batch:
        steppers = {m: stepper(m, x, batch) for m in a.methods}
        times = {m: [] for m in a.methods}
        for r in range(a.rounds + 1):
            for m in a.methods:
                step, _, state = steppers[m]
                use_store(state)
                cpu = time.process_time()
                for i in range(a.steps):
                    step(i)
                if r:
                    times[m].append((time.process_time() - cpu) / a.steps * 1e3)
        base = statistics.median(times["eager"]) if "eager" in times else None
        for m in a.methods:
            ms = statistics.median(times[m])
            ratio = f"{ms / base:6.2f}× eager" if base else ""
            print(f"batch {batch:>4}  {m:<14} {ms:8.2f} ms/step  {ratio}  first two steps {steppers[m][1]:6.1f} s", flush=True)
    if "torch.compile" in a.methods:
        print(f"torch.compile: {graph_breaks(x, a.batch[0])} graph breaks in the loss (torch._dynamo.explain)")


if __name__ == "__main__":
    main()
