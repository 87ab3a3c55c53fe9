"""What every model family shares: x observed through a registered likelihood, in the plate ``data``.

Each family (:class:`~pyrovae.model.vae.VAE`, :class:`~pyrovae.model.conditional.ConditionalVAE`,
:class:`~pyrovae.model.semisupervised.SemiSupervisedVAE`, :class:`~pyrovae.model.hierarchical.TwoLayerVAE`)
ends its generative model the same way, for each datapoint i of the plate ``data``::

    x_i ~ p(x | f_θ(·))      the likelihood (``LIKELIHOODS``), event_shape input_shape

where the decoder's output ``out`` is ``[..., P, *input_shape]`` with P = ``likelihood.num_params``
(``[..., *input_shape]`` when P = 1, or the flat ``[..., P·D]``, are accepted too). This module holds
that part once: the likelihood, the decoder-output shapes, the data check of x, the plate (scaled
to ``num_data`` when given) and the family's description.
"""
from __future__ import annotations

import math
from typing import Optional

import pyro
import torch
from pyro.infer.util import is_validation_enabled
from torch import nn

from .. import checks
from ..components.likelihoods import LIKELIHOODS
from ..components.priors import PRIORS
from ..errors import DataError, InputError


def component_name(component) -> str:
    """The registry name of a component (its class name for an unregistered one)."""
    return getattr(component, "registry_name", type(component).__name__)


class LatentVariableModel(nn.Module):
    """Base class of the families: ``input_shape``, ``likelihood``, ``num_data`` and the shared pieces.

    Args:
        input_shape: an int (flat data) or a tuple such as ``(28, 28)``; x is ``[batch, *input_shape]``.
        likelihood: a registered name (``LIKELIHOODS``) or a :class:`~pyrovae.components.Likelihood`;
            ``likelihood_options``: the named likelihood's constructor options.
        num_data: if given, the data plate has this size and a minibatch's log-densities are scaled
            by ``num_data / batch`` so the ELBO is that of the whole data set.

    A subclass builds its networks, then calls :meth:`_check_decoder` on a latent size, and
    defines ``model``, ``guide`` and ``describe()``; it extends :meth:`check_data` when the model
    takes more arguments than x (labels).

    The family protocol — what the trainer, the lab and the command line ask a family, and never
    its class: :meth:`arguments` (a batch as model and guide take it), :attr:`labelled` (built with
    K classes; ``sample(n, label=k)``), :attr:`semi_supervised` and :meth:`labeled_terms` (the
    terms trained on a few labeled pairs), :attr:`own_options` (the [model] keys it takes in
    ``family_options`` instead), :meth:`checkpoint_pairs` (probe arguments that create every
    parameter a checkpoint holds), :meth:`check_closed_form`, :meth:`encoder_parameters` /
    :meth:`decoder_parameters` (for gradient studies) and :meth:`extra_scores` (per-datapoint
    scores beside the bounds, e.g. M2's accuracy). A user's family inherits the defaults below:
    a pair on x alone, no labels, no closed form.
    """

    #: True when model and guide need a label beside x (``model(x, y)``): a conditional VAE.
    #: M2's y is optional (summed out when absent), so it does not.
    takes_labels = False

    #: True when the family is built with ``num_classes`` = K, the number of the data's classes (the
    #: data must have labels): its decoder reads a label y and ``sample(n, label=k)`` draws class k.
    labelled = False

    #: True when training keeps only a few labels (``data.labeled``): the main pair is trained on the
    #: unlabeled x and :meth:`labeled_terms` on the labeled pairs.
    semi_supervised = False

    #: The common [model] config keys the family does not take from [model]: it has its own, of
    #: another form, in ``model.family_options`` (the two-layer VAE's per-layer sizes).
    own_options: tuple = ()

    #: True when the family can start its decoder's last bias at the training data's mean
    #: (``init_output_bias(x)``; the config's ``model.init_output_bias``).
    starts_output_bias = False

    #: True when model and guide compute the same thing at every step given their arguments' shapes
    #: (no state that changes between steps), so that ``pyrovae.train`` may record a step once and
    #: replay it (``traced_step="auto"``, :mod:`pyrovae.inference.tracedstep`). A subclass whose
    #: model reads such state sets it to False.
    traceable = True

    def __init__(self, input_shape, likelihood="bernoulli", likelihood_options=None,
                 num_data: Optional[int] = None):
        super().__init__()
        self.input_shape = checks.shape("input_shape", input_shape)
        self.num_data = None if num_data is None else checks.positive_int("num_data", num_data)
        self.likelihood = LIKELIHOODS.build(likelihood, likelihood_options, input_shape=self.input_shape)

    # -- construction ---------------------------------------------------------------------------
    def _build_prior(self, prior, prior_options, latent_dim: int, *, needs_encoder_of_x: bool = True):
        """p(z) from ``PRIORS`` (event [latent_dim]), attached to this model. A prior evaluated
        through the encoder (VampPrior) needs ``self.posterior(x)`` of x alone: a family whose
        posterior needs more (a label) passes ``needs_encoder_of_x=False`` to refuse it."""
        built = PRIORS.build(prior, prior_options, latent_dim=latent_dim, input_shape=self.input_shape)
        if built.uses_encoder and not needs_encoder_of_x:
            raise InputError(f"prior {component_name(built)!r} evaluates q(z|x) at pseudo-inputs, but the "
                             f"{type(self).__name__}'s q(z|·) also needs a label: use another prior")
        built.attach(self)
        return built

    @staticmethod
    def _probe(module: nn.Module, shape: tuple) -> torch.Tensor:
        """``module`` applied to a zero batch of 2 inputs of ``shape`` (in its dtype), without gradients."""
        param = next(module.parameters(), None)
        like = torch.zeros(()) if param is None else param
        with torch.no_grad():
            return module(like.new_zeros((2,) + tuple(shape)))

    def _check_decoder(self, decoder: nn.Module, input_dim: int) -> None:
        """InputError unless ``decoder`` maps ``[batch, input_dim]`` to the likelihood's shape."""
        self._decoder_out(self._probe(decoder, (input_dim,)))

    # -- the pieces -------------------------------------------------------------------------------
    def _decoder_out(self, out: torch.Tensor) -> torch.Tensor:
        """Bring a decoder output to ``[..., P, *input_shape]`` (accepts flat or P-less forms)."""
        P, shape = self.likelihood.num_params, self.input_shape
        full = (P,) + shape
        n = len(full)
        if tuple(out.shape[-n:]) == full:
            return out
        if P == 1 and tuple(out.shape[-len(shape):]) == shape:
            return out.unsqueeze(-len(shape) - 1)
        if out.shape[-1] == math.prod(full):
            return out.unflatten(-1, full)
        raise InputError(f"decoder output must end in {list(full)} (or {math.prod(full)} flat) for the "
                         f"{self.likelihood.registry_name} likelihood, got shape {list(out.shape)}")

    def _check_x(self, x) -> torch.Tensor:
        """DataError for x of the wrong shape or dtype, NaN/Inf, or outside the likelihood's support."""
        self.likelihood.check_range(*checks.data_tensor(x, self.input_shape))
        self.likelihood.check_values(x)
        param = next(self.parameters(), None)
        if param is not None and x.dtype != param.dtype:
            raise DataError(f"x has dtype {x.dtype} but the {type(self).__name__}'s parameters have dtype "
                            f"{param.dtype}: convert one of them (x.to({param.dtype}) or model.to({x.dtype}))")
        return x

    def check_data(self, x) -> torch.Tensor:
        """Raise DataError for x of the wrong shape or dtype, NaN/Inf, or outside the support."""
        return self._check_x(x)

    def _validate(self, *args, **kwargs) -> None:
        """``check_data(...)`` while Pyro's validation is on (its default). ``pyrovae.train`` checks
        the whole data set once, before training, and validates only its first step."""
        if is_validation_enabled():
            self.check_data(*args, **kwargs)

    def _plate(self, x):
        """The plate ``data`` over x's first dimension (of size ``num_data``, subsampled, if given)."""
        if self.num_data is None:
            return pyro.plate("data", x.shape[0])
        return pyro.plate("data", self.num_data, subsample=torch.arange(x.shape[0], device=x.device))

    # -- the protocol -------------------------------------------------------------------------------
    def arguments(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> tuple:
        """The arguments of ``model``/``guide`` (and ``reconstruct``, ``encode``) for x ``[N, *input_shape]``
        and the data's labels ``[N]`` (None when the data have none): ``(x,)``, or ``(x, y)`` for a
        family that :attr:`takes_labels` (InputError when ``labels`` is None)."""
        if not self.takes_labels:
            return (x,)
        if labels is None:
            raise InputError(f"the {type(self).__name__}'s model and guide need the data's labels, and none were given")
        return x, labels

    def labeled_terms(self, x: torch.Tensor, y: torch.Tensor, *, num_unlabeled: int,
                      classifier_weight: float = 0.0) -> list:
        """The parts of the objective on labeled pairs (x ``[N_l, *input_shape]``, y ``[N_l]``) of a
        :attr:`semi_supervised` family whose main pair trains on ``num_unlabeled`` x: a list of
        ``(model, guide, args, weight)``, each trained with ``Trace_ELBO`` beside the main pair
        (weight × its ELBO, each minibatch scaled to the N_l pairs). None for the others."""
        return []

    def checkpoint_pairs(self) -> list:
        """``(model, guide, args)`` for every pair whose parameters a checkpoint holds, with probe
        arguments of 2 zero datapoints on the model's device (labels: class 0): running each once
        creates the parameters the checkpoint's values are loaded into."""
        param = next(self.parameters(), None)
        x = torch.zeros((2,) + self.input_shape, device=None if param is None else param.device)
        return [(self.model, self.guide, self.arguments(x, x.new_zeros(2, dtype=torch.long)))]

    def check_closed_form(self) -> None:
        """InputError (one line) unless ``closed_form_elbo``, the lecture notes' hand-written loss,
        applies: the plain VAE's, with p(z) = N(0, I), a diagonal guide and a hand-written density."""
        raise InputError(f"closed_form_elbo is written for the plain VAE (model(x) with one latent z), "
                         f"not the {type(self).__name__}")

    def encoder_parameters(self) -> list:
        """φ: the parameters of the guide's networks (encoders, variational families, classifier)."""
        return self._parameters_of(self._inference_modules())

    def decoder_parameters(self) -> list:
        """θ: the parameters the guide does not use (decoders, likelihood, prior)."""
        inference = {id(p) for p in self.encoder_parameters()}
        return [p for p in self.parameters() if id(p) not in inference]

    def _inference_modules(self) -> list:
        """The guide's modules: by default every child module whose name starts with encoder,
        family or classifier."""
        return [m for name, m in self.named_children() if name.startswith(("encoder", "family", "classifier"))]

    @staticmethod
    def _parameters_of(modules) -> list:
        seen, out = set(), []
        for module in modules:
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def extra_scores(self, x: torch.Tensor, labels: Optional[torch.Tensor]) -> dict:
        """Per-datapoint scores beside the bounds, ``{name: [N] float}`` (e.g. M2's ``accuracy``, 1
        where the classifier is right); none by default."""
        return {}

    # -- description --------------------------------------------------------------------------------
    def describe(self) -> str:
        """The model in the lecture notes' notation, one factor a line."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return self.describe()

    def __str__(self) -> str:
        return f"{type(self).__name__}\n{self.describe()}"
