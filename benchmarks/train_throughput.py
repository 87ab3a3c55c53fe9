"""Training throughput: pyrovae.train against a hand-written PyTorch loop of the same VAE.

Everything runs in this one process on the same MNIST tensor (dynamically binarized, re-drawn each
epoch), with the network of Pyro's VAE tutorial: 784-400-50, softplus, Bernoulli likelihood,
diagonal Gaussian guide, Adam. Two pairs go through ``pyrovae.train``'s trainer:

* ``builtin``: ``pyrovae.VAE((28, 28), 50, hidden=(400,))``, σ = softplus(·) + 1e-5;
* ``user``: a model/guide pair written by a user as in Pyro's VAE tutorial (:class:`TutorialVAE`:
  its own ``Encoder``/``Decoder`` modules, ``pyro.module``, ``pyro.plate("data", B)``,
  ``dist.Normal(0, 1)`` prior of shape [B, 50], σ = exp(·), ``dist.Bernoulli(logits=...)``).

Each is raced against a hand-written loop of its own network computing the same objective, in
``pyrovae.train``'s trainer three ways, so that each layer's effect is measured side by side:

* ``traced on``: the fast step recorded once as a graph and replayed (``traced_step="on"``,
  :mod:`pyrovae.inference.tracedstep`) — what ``pyrovae.train`` runs by default for ``builtin``;
* ``traced off``: the fast step, the pair's Python at every step (``traced_step="off"``) — the
  default for ``user`` (``"auto"`` traces pyrovae's own models only; a user asks with "on");
* ``fast_step off``: every step through the Pyro ELBO (``fast_step=False``).

The objectives:

* ``mean-field``: −ELBO = BCE(x, f(z)) + ½ Σ(μ² + σ² − log σ² − 1)   (TraceMeanField_ELBO)
* ``trace``:      −ELBO = BCE(x, f(z)) + log q(z|x) − log p(z), z sampled  (Trace_ELBO)

The hand-written loop runs twice, with ``torch.optim.Adam`` as a user writes it (the issue's
baseline: the ratios) and with the fused Adam that pyrovae.train uses (the same optimizer: that
ratio measures the Pyro model/guide and SVI against plain PyTorch alone). The pyrovae trainers
update a tqdm progress bar (written to /dev/null) every step as ``pyrovae.train`` does. All five
are timed in alternation (``--repeats`` rounds of one epoch each, after a warm-up round) and the
median samples per second of each is reported with the ratios — the machine is shared and noisy,
so only ratios measured side by side mean anything. Each round starts one loop later, so that no
loop always follows the same one.

    python benchmarks/train_throughput.py [--subset 20000] [--repeats 9] [--threads 2]
        [--batch 256 [20 100 ...]] [--pair builtin user] [--objective mean-field trace] [--quick]

``--whole-call``: a whole ``pyrovae.train(...)`` call, from start to return, against a
hand-written PyTorch loop of the same network in the same process, side by side — the user's pair
(:class:`TutorialVAE`), ``elbo="mean-field"``, batch 256, a tensor of the 60,000 MNIST training
images (grey levels, no test set, the progress bar on as by default, written to /dev/null), for
1 and 3 epochs (``--epochs``), and beside them the same call with the traced step asked for
(``step=StepSettings(traced_step="on")``: what a user's pair gains without Pyro's runtime at each
step; not the default for a user's pair); ``--repeats`` rounds of one call of each, each round
starting one later and each call with a fresh model from the round's seed: medians of the
wall-clock seconds and the ratio hand-written ÷ pyrovae (> 1: pyrovae's call is the faster); the
same ratio round by round (median, lowest, highest: how far one round's draw of the host's speed
moves it); and, from the time at the end of each step, what separates the calls: the seconds to
the end of the first step (construction, checks) and the median of the later steps. Then a
breakdown of one 1-epoch call, each part timed by a wrapper around it: the seconds of what it
does beyond the steps — the pair check, the validated first step, the fast step's reference
check, the per-epoch evaluation, the divergence monitor, the progress bar — beside the steps::

    python benchmarks/train_throughput.py --whole-call [--epochs 1 3] [--repeats 5] [--threads 2]

``--quick`` (≈ 1–3 minutes on a loaded 2-core machine): 1,280 images, 5 rounds, one torch thread,
mean-field, batches 20, 100 and 256, both pairs (each unless given). On a machine shared with
other jobs, use one thread: two OpenMP threads contending for busy cores spin and wait, and a
step can take 30× longer; the CPU-time ratios are then the steadier ones.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from typing import Optional

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal
from tqdm.auto import tqdm

import pyrovae
from pyrovae.data import load_dataset
from pyrovae.inference.callbacks import Callback, Callbacks, ProgressBar
from pyrovae.inference.train import Trainer

LATENT, HIDDEN = 50, 400


class HandWrittenVAE(nn.Module):
    """The same network and parameterisation as pyrovae.VAE((28, 28), 50, hidden=(400,))."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(784, HIDDEN), nn.Softplus())
        self.loc, self.scale = nn.Linear(HIDDEN, LATENT), nn.Linear(HIDDEN, LATENT)
        self.dec = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, 784))

    def posterior(self, x):
        """(μ, σ) of q(z|x), each [B, 50]."""
        h = self.enc(x.flatten(1))
        return self.loc(h), F.softplus(self.scale(h)) + 1e-5

    def logits(self, z):
        return self.dec(z)

    def loss(self, x, objective: str):
        x = x.flatten(1)
        mu, sigma = self.posterior(x)
        z = mu + sigma * torch.randn_like(mu)
        bce = F.binary_cross_entropy_with_logits(self.logits(z), x, reduction="sum")
        if objective == "mean-field":
            kl = 0.5 * (mu ** 2 + sigma ** 2 - torch.log(sigma ** 2) - 1).sum()
        else:  # log q(z|x) − log p(z) at the sampled z, as a PyTorch user writes it
            kl = (Normal(mu, sigma).log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum()
        return bce + kl


class Encoder(nn.Module):
    """q(z|x) of Pyro's VAE tutorial: h = softplus(W1 x), μ = W21 h, σ = exp(W22 h); x [B, 784] → [B, 50] twice."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, HIDDEN), nn.Linear(HIDDEN, LATENT), nn.Linear(HIDDEN, LATENT)
        self.softplus = nn.Softplus()

    def forward(self, x):
        hidden = self.softplus(self.fc1(x.reshape(-1, 784)))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class Decoder(nn.Module):
    """p(x|z) of Pyro's VAE tutorial, as logits: softplus(W1 z) → W21 h; z [B, 50] → [B, 784]."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21 = nn.Linear(LATENT, HIDDEN), nn.Linear(HIDDEN, 784)
        self.softplus = nn.Softplus()

    def forward(self, z):
        return self.fc21(self.softplus(self.fc1(z)))


class TutorialVAE(nn.Module):
    """A user's pair in the style of Pyro's VAE tutorial (the Bernoulli given by logits, as the
    README's hand-written pair does; the hand-written loop then computes the same BCE)."""

    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = Encoder(), Decoder()

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], LATENT)))
            z_scale = x.new_ones(torch.Size((x.shape[0], LATENT)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            logits = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(logits=logits, validate_args=False).to_event(1),
                        obs=x.reshape(-1, 784))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))

    # the same network, as the hand-written loop uses it
    def posterior(self, x):
        return self.encoder(x)

    def logits(self, z):
        return self.decoder(z)

    loss = HandWrittenVAE.loss


def hand_written_epoch(vae, opt, data, epoch, objective, batch):
    for xb in data.batches(batch, epoch=epoch):
        loss = vae.loss(xb, objective) * (len(data) / xb.shape[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def hand_written(network, data, objective, batch, fused: bool):
    """An epoch function of the hand-written loop with its own network and Adam."""
    vae = network()
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=fused or None)
    return lambda epoch: hand_written_epoch(vae, opt, data, epoch, objective, batch)


def pyrovae_trainer(pair, data, objective, batch, fast_step: bool = True, traced_step="auto"):
    """pyrovae's trainer of the same VAE with its own parameters: (the trainer, its param store's
    state, put in place before each of its epochs by :func:`with_bar`)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = pyrovae.VAE((28, 28), LATENT, hidden=(HIDDEN,)) if pair == "builtin" else TutorialVAE()
    trainer = Trainer(vae.model, vae.guide, data, batch_size=batch, lr=1e-3, elbo=objective, num_particles=1,
                      test_data=None, device="cpu", fast_step=fast_step, traced_step=traced_step)
    return trainer, pyro.get_param_store().get_state()


class SinkBar(ProgressBar):
    """pyrovae.train's progress bar (updated every step), written to ``sink``."""

    def __init__(self, sink):
        self.bar = tqdm(total=10 ** 9, unit="step", desc="train", file=sink, mininterval=0.1)


def with_bar(trainer_and_store, sink):
    """The trainer's epoch function, updating a progress bar every step as pyrovae.train does."""
    trainer, store = trainer_and_store
    bar = Callbacks([SinkBar(sink)])

    def epoch_fn(epoch):
        pyro.clear_param_store()  # two trainers: each with its own parameters under the pair's names
        pyro.get_param_store().set_state(store)
        trainer.run_epoch(epoch, bar)
    return epoch_fn


def alternate(runs: dict, n_images: int, repeats: int) -> dict:
    """Time ``runs`` (name → epoch function) in alternation, each round starting one run later
    (round 0 warms up); name → median images per second of (wall-clock, CPU time)."""
    rates = {name: ([], []) for name in runs}
    names = list(runs)
    for r in range(repeats + 1):
        for name in names[r % len(names):] + names[:r % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            runs[name](r + 1)
            if r:
                rates[name][0].append(n_images / (time.perf_counter() - wall))
                rates[name][1].append(n_images / (time.process_time() - cpu))
    return {name: tuple(statistics.median(v) for v in pair) for name, pair in rates.items()}


NAMES = ("traced on", "traced off", "hand-written", "hand, fused Adam", "fast_step off")


def measure(pair, objective, batch, data, repeats, sink):
    """Images per second (wall clock, CPU time) of each of :data:`NAMES` on this pair, objective and batch."""
    network = HandWrittenVAE if pair == "builtin" else TutorialVAE
    runs = {NAMES[0]: with_bar(pyrovae_trainer(pair, data, objective, batch, traced_step="on"), sink),
            NAMES[1]: with_bar(pyrovae_trainer(pair, data, objective, batch, traced_step="off"), sink),
            NAMES[2]: hand_written(network, data, objective, batch, fused=False),
            NAMES[3]: hand_written(network, data, objective, batch, fused=True),
            NAMES[4]: with_bar(pyrovae_trainer(pair, data, objective, batch, fast_step=False), sink)}
    return alternate(runs, len(data), repeats)


def hand_written_call(x, epochs: int, batch: int, seed: int, clock: Optional[list] = None) -> None:
    """The whole hand-written run: a fresh network, torch's Adam, shuffled minibatches, −ELBO × N/B.
    ``clock``: the time at the end of every step is appended to it."""
    torch.manual_seed(seed)
    vae = TutorialVAE()
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    n = len(x)
    for _ in range(epochs):
        for idx in torch.randperm(n).split(batch):
            loss = vae.loss(x[idx], "mean-field") * (n / len(idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if clock is not None:
                clock.append(time.perf_counter())


class StepClock(Callback):
    """The time at the end of every step, appended to ``times`` (as :func:`hand_written_call` does)."""

    def __init__(self, times: list):
        self.times = times

    def on_step(self, state) -> None:
        self.times.append(time.perf_counter())


def pyrovae_call(x, epochs: int, batch: int, seed: int, clock: Optional[list] = None, traced: str = "auto") -> None:
    """The whole ``pyrovae.train`` call a user writes for the same network (progress bar to /dev/null).
    ``clock``: the time at the end of every step is appended to it (a :class:`StepClock` callback);
    ``traced="on"``: the call as a user who asks for the traced step writes it."""
    pyro.clear_param_store()
    torch.manual_seed(seed)
    vae = TutorialVAE()
    callbacks = [] if clock is None else [StepClock(clock)]
    step = None if traced == "auto" else pyrovae.StepSettings(traced_step=traced)
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        pyrovae.train(vae.model, vae.guide, x, epochs=epochs, batch_size=batch, elbo="mean-field", lr=1e-3,
                      callbacks=callbacks, step=step)


def pyrovae_traced_call(x, epochs: int, batch: int, seed: int, clock: Optional[list] = None) -> None:
    """:func:`pyrovae_call` with ``step=StepSettings(traced_step="on")``: the user's pair recorded once
    and replayed, without Pyro's runtime at every step (not the default for a user's pair)."""
    pyrovae_call(x, epochs, batch, seed, clock, traced="on")


def _parts():
    """label → (object, attribute) of what a whole call does, timed by :func:`breakdown`."""
    import importlib

    callbacks, faststep, train_module = (importlib.import_module(f"pyrovae.inference.{name}")
                                         for name in ("callbacks", "faststep", "train"))
    return {"construction (data, pair check, ELBO)": (train_module.Trainer, "__init__"),
            "  of which the pair check": (train_module, "check_pair_on"),
            "steps": (train_module.Trainer, "step"),
            "  of which the fast step's check": (faststep.FastStep, "_check"),
            "per-epoch evaluation": (train_module.Trainer, "evaluate"),
            "divergence monitor": (callbacks.DivergenceStop, "on_step"),
            "progress bar": (callbacks.ProgressBar, "on_step"),
            "progress bar start/end": (callbacks.ProgressBar, "on_train_start"),
            "whole call": (train_module.Trainer, "fit")}


@contextlib.contextmanager
def timing(parts: dict):
    """Each (object, attribute) of ``parts`` wrapped to append its calls' seconds to ``seconds[label]``."""
    seconds = {label: [] for label in parts}
    saved = []
    for label, (owner, name) in parts.items():
        fn = getattr(owner, name)

        def timed(*a, _fn=fn, _label=label, **k):
            start = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                seconds[_label].append(time.perf_counter() - start)
        saved.append((owner, name, fn))
        setattr(owner, name, timed)
    try:
        yield seconds
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def breakdown(x, batch: int) -> None:
    """Seconds of each part of one 1-epoch whole call (:func:`_parts`), and in steps of the median step."""
    with timing(_parts()) as seconds:
        start = time.perf_counter()
        pyrovae_call(x, 1, batch, 0)
        total = time.perf_counter() - start
    steps = seconds["steps"]
    step = statistics.median(steps[2:]) if len(steps) > 2 else statistics.median(steps)
    rows = {**{label: sum(v) for label, v in seconds.items()}, "  first step (validated, with the check)": steps[0],
            "  later steps": sum(steps[1:]), "pyrovae_call (model built, train called)": total}
    print(f"# one 1-epoch call, {len(steps)} steps, median step {step * 1e3:.2f} ms: seconds and steps' worth")
    for label, value in rows.items():
        print(f"{label:<44}{value:>9.3f} s{value / step:>9.1f} steps")


#: the calls of the whole-call race: label → function; the first is the default call, the last the baseline
WHOLE_CALLS = {"pyrovae.train": pyrovae_call, "pyrovae.train, traced (opt-in)": pyrovae_traced_call,
               "hand-written": hand_written_call}


def race(x, epochs: int, batch: int, repeats: int) -> dict:
    """``repeats`` rounds of one whole call of each of :data:`WHOLE_CALLS`, each round starting one
    later (a fresh model from seed r in round r): label → a row per call of (seconds from start to
    return, seconds to the end of the first step, median seconds of a later step)."""
    names = list(WHOLE_CALLS)
    calls = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            clock, start = [], time.perf_counter()
            WHOLE_CALLS[name](x, epochs, batch, r, clock)
            later = [b - a for a, b in zip(clock, clock[1:])]
            calls[name].append((time.perf_counter() - start, clock[0] - start, statistics.median(later)))
    return calls


def whole_call(args) -> None:
    x = load_dataset("mnist", "train").x[:args.subset]
    print(f"# {platform.processor() or platform.machine()}, {args.threads} torch threads, torch {torch.__version__}, "
          f"pyro {pyro.__version__}; user's pair, mean-field, batch {args.whole_batch}, {len(x)} MNIST images "
          f"(grey levels), no test set; {args.repeats} rounds of one whole call of each: the median wall-clock "
          "seconds and the ratio hand-written ÷ this call of the medians; the same ratio round by round (median "
          "[lowest, highest]); inside the calls, the median seconds to the end of the first step and of a "
          "later step, and the ratio of the later steps")
    print(f"{'epochs':>6}  {'call':<32}{'seconds':>9}{'ratio':>8}{'round by round':>25}{'first step':>12}"
          f"{'later step':>12}{'ratio':>7}", flush=True)
    baseline = list(WHOLE_CALLS)[-1]
    for epochs in args.epochs:
        calls = race(x, epochs, args.whole_batch, args.repeats)
        medians = {name: [statistics.median(column) for column in zip(*rows)] for name, rows in calls.items()}
        hand, _, hand_step = medians[baseline]
        for name, (seconds, first, step) in medians.items():
            rounds = sorted(h[0] / c[0] for c, h in zip(calls[name], calls[baseline]))
            spread = f"{statistics.median(rounds):.3f} [{rounds[0]:.3f}, {rounds[-1]:.3f}]" if name != baseline else ""
            print(f"{epochs:>6}  {name:<32}{seconds:>7.2f} s{hand / seconds:>8.3f}{spread:>25}{first * 1e3:>9.0f} ms"
                  f"{step * 1e3:>9.2f} ms{hand_step / step:>7.3f}", flush=True)
    breakdown(x, args.whole_batch)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--whole-call", action="store_true", help="whole pyrovae.train calls against a hand-written loop")
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 3], help="--whole-call: epochs per call")
    p.add_argument("--whole-batch", type=int, default=256, help="--whole-call: the minibatch size")
    p.add_argument("--subset", type=int, default=20000, help="training images per epoch")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--batch", type=int, nargs="+", default=[256], help="minibatch sizes")
    p.add_argument("--pair", nargs="+", choices=("builtin", "user"), default=["builtin"])
    p.add_argument("--objective", nargs="+", choices=("mean-field", "trace"), default=["mean-field", "trace"])
    p.add_argument("--quick", action="store_true", help="--subset 1280 --repeats 5 --threads 1 --objective "
                   "mean-field --batch 20 100 256 --pair builtin user (each unless given)")
    args = p.parse_args()
    if args.quick:
        given = {a.split("=")[0] for a in sys.argv[1:]}
        quick = {"--subset": ("subset", 1280), "--repeats": ("repeats", 5), "--threads": ("threads", 1),
                 "--objective": ("objective", ["mean-field"]),
                 "--batch": ("batch", [20, 100, 256]), "--pair": ("pair", ["builtin", "user"])}
        for flag, (attr, value) in quick.items():
            if flag not in given:
                setattr(args, attr, value)
    torch.set_num_threads(args.threads)
    if args.whole_call:
        if "--subset" not in " ".join(sys.argv[1:]):
            args.subset = 60000
        if "--repeats" not in " ".join(sys.argv[1:]):
            args.repeats = 5
        return whole_call(args)
    data = load_dataset("mnist", "train", binarize="dynamic", subset=args.subset)
    print(f"# {platform.processor() or platform.machine()}, {args.threads} torch threads, torch {torch.__version__}, "
          f"pyro {pyro.__version__}; {args.subset} MNIST images (dynamic binarization), median of "
          f"{args.repeats} alternating epochs; samples per second (wall clock)")
    print(f"{'pair':<8}{'batch':>6} {'objective':<11}" + "".join(f"{n:>18}" for n in NAMES) +
          f"{'ratio on':>10}{'ratio off':>10}{'on (fused)':>12}{'CPU: on, off':>16}{'fast_step off':>15}", flush=True)
    with open(os.devnull, "w") as sink:
        for pair in args.pair:
            for batch in args.batch:
                for objective in args.objective:
                    r = measure(pair, objective, batch, data, args.repeats, sink)
                    hand, fused = r[NAMES[2]], r[NAMES[3]]
                    on, off, pyro_elbo = r[NAMES[0]], r[NAMES[1]], r[NAMES[4]]
                    print(f"{pair:<8}{batch:>6} {objective:<11}" + "".join(f"{r[n][0]:>14.0f} x/s" for n in NAMES) +
                          f"{on[0] / hand[0]:>10.3f}{off[0] / hand[0]:>10.3f}{on[0] / fused[0]:>12.3f}"
                          f"{on[1] / hand[1]:>10.3f}, {off[1] / hand[1]:.3f}{pyro_elbo[0] / hand[0]:>15.3f}", flush=True)


if __name__ == "__main__":
    main()
