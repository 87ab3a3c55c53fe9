"""Inference on any Pyro model/guide pair.

===============  ==================================================================================
``traces``       running a pair as Pyro's ELBOs do: traces, particles, plate nesting, closed-form KL,
                 the ELBO's per-site terms (``site_terms``)
``pairs``        a pair's sample sites checked to match, before any number is computed
``arguments``    the pair's arguments over a data set (tensor, tuple or dict) and their minibatches
``state``        what a check or an evaluation touches (modules, modes, buffers, randomness), put back
``vectorize``    vectorized particles checked against the same draws run one at a time before use
``estimators``   per-datapoint ELBO estimates (Monte Carlo, analytic KL, the notes' closed form) and
                 the importance-weighted bound, in nats
``elbos``        Pyro's ELBOs by name (:data:`ELBOS`) and :class:`MeanField_ELBO`
``pathwise``     lower-variance gradients: :class:`STL_ELBO` (sticking the landing), :class:`DReG_IWAE`
``faststep``     the fast step, an ELBO standing in for Trace/mean-field without Pyro's traces, checked
``tracedstep``   the fast step recorded once as a graph and replayed, an ELBO, checked; ``speed_path``
``optim``        Adam's settings, learning-rate schedules by name (Burda et al.'s), gradient clipping
``settings``     the trainer's other settings, declared once: ``RunSettings``, ``StepSettings``
``callbacks``    the callback protocol a training run calls, and the trainer's own callbacks (schedule,
                 warm-up, divergence stop, checkpoint, progress bar)
``device``       a device name resolved to a ``torch.device`` (one this machine has)
``precision``    bf16 networks under ``torch.autocast``, log-densities in float32
``distributed``  data-parallel training under ``torchrun`` (gloo/NCCL): shards, all-reduce, rank 0 writes
``train``        :func:`train`: SVI over a data set, minibatches scaled to its size, checkpoints
``checkpoint``   atomic checkpoint files read back without unpickling arbitrary objects
===============  ==================================================================================
"""
from .elbos import ELBOS, MeanField_ELBO, make_elbo
from .estimators import (analytic_elbo, analytic_sites, closed_form_elbo, elbo_parts, iwae_bound, log_weights,
                         mc_elbo)
from .optim import OptimizerSettings
from .settings import RunSettings, StepSettings
from .train import ScaleLatents, Term, Trainer, train

__all__ = ["ELBOS", "MeanField_ELBO", "make_elbo", "analytic_elbo", "analytic_sites", "closed_form_elbo",
           "elbo_parts", "iwae_bound", "log_weights", "mc_elbo", "ScaleLatents", "Term", "Trainer", "train",
           "OptimizerSettings", "RunSettings", "StepSettings"]
