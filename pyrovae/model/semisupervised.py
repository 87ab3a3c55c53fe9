"""The M2 semi-supervised VAE (Kingma et al. 2014): a label y that is observed for some x and latent for the rest.

Generative model (``model(x, y=None)``), for each datapoint i of the plate ``data``::

    y_i ~ p(y) = Cat(1/K)                  observed when y is given, a latent otherwise
    z_i ~ p(z)                             prior, event_shape [L]
    x_i ~ p(x | f_θ(z_i, y_i))             likelihood, event_shape input_shape

Guide (``guide(x, y=None)``)::

    y_i ~ q_φ(y | x_i) = Cat(softmax(c_φ(x_i)))    only when y is absent; enumerated
                                                   (infer={"enumerate": "parallel"})
    z_i ~ q_φ(z | x_i, y_i) = family(e_φ(x_i, y_i))

p(x|z,y) and q(z|x,y) are those of :class:`~pyrovae.model.conditional.ConditionalVAE`. The two
bounds of the paper, per datapoint:

    L(x, y) = log p(y) + E_q(z|x,y)[log p(x|z,y)] − KL(q(z|x,y) ‖ p(z))       ≤ log p(x, y)
    U(x)    = Σ_y q(y|x) L(x, y) + H(q(y|x))                                   ≤ log p(x)

``TraceEnum_ELBO`` (``elbo="enum"``) sums U's K classes exactly, the guide's y having batch shape
``[K, 1]`` (left of the data plate) and z ``[K, batch, L]``; other ELBOs sample y and estimate
q(y|x)'s gradient by the score function. The objective maximised is

    J^α = Σ_{(x,y) labeled} L(x, y) + Σ_{x unlabeled} U(x) + α' Σ_{(x,y) labeled} log q(y|x),

in which the last term trains the classifier on the labels directly (``classifier_model`` /
``classifier_guide``). Trained by minibatches — B_u of the N_u unlabeled x and B_l of the N_l
labeled pairs in every step — pyrovae maximises, per step (:meth:`SemiSupervisedVAE.labeled_terms`),

    J_step = N_u · [ mean_{B_u} U(x) + (N_l / N_u) · mean_{B_l} L(x, y) + α · mean_{B_l} log q(y|x) ],

α = 0.1 · N_u / N_l (60 for MNIST with 100 labels): the two ELBOs as in J^α (each datapoint once
an epoch), the classifier's mean over the labeled minibatch weighted α against the unlabeled
minibatch's mean ELBO. Within a step a labeled pair's log q(y|x) thus weighs what it weighs in J^α
with Kingma et al.'s α' = 0.1·N on the labeled mean (60 unlabeled U(x) for MNIST with 100
labels); but the labeled minibatch comes back in every step, so over an epoch it weighs N_u / B_u
times more (599: 35,940 U(x)). Weighted as in J^α instead, the unlabeled term's pull on q(y|x)
outweighs a hundred labels, and the test error rises while training goes on. In pyrovae::

    pyrovae.train(m2.model, m2.guide, x_unlabeled, elbo="enum", extra=[
        pyrovae.Term(m2.model, m2.guide, (x_labeled, y_labeled)),
        pyrovae.Term(m2.classifier_model, m2.classifier_guide, (x_labeled, y_labeled),
                     weight=alpha * len(x_unlabeled) / len(x_labeled))])

"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import pyro
import pyro.distributions as dist
import torch

from .. import checks
from ..components.nets import mlp
from .conditional import ConditionalVAE


class SemiSupervisedVAE(ConditionalVAE):
    """The M2 model: ``m2.model(x, y=None)``, ``m2.guide(x, y=None)`` and the classifier q(y|x).

    Args: those of :class:`~pyrovae.model.conditional.ConditionalVAE`, and
        classifier_hidden: the hidden sizes of c_φ, ``[..., D] -> [..., K]`` logits (default: ``hidden``).

    y, where given, is an index ``[batch]`` or a one-hot ``[batch, K]``.
    """

    takes_labels = False  # y is optional: summed out where it is not given
    semi_supervised = True

    def __init__(self, input_shape: Union[int, Sequence[int]], latent_dim: int, num_classes: int, *,
                 prior="normal", likelihood="bernoulli", guide="diagonal", hidden=(500,),
                 classifier_hidden: Optional[Sequence[int]] = None, activation: Optional[str] = None,
                 prior_options=None, likelihood_options=None, guide_options=None, num_data: Optional[int] = None):
        super().__init__(input_shape, latent_dim, num_classes, prior=prior, likelihood=likelihood, guide=guide,
                         hidden=hidden, activation=activation, prior_options=prior_options,
                         likelihood_options=likelihood_options, guide_options=guide_options, num_data=num_data)
        sizes = hidden if classifier_hidden is None else classifier_hidden
        sizes = tuple(checks.positive_int("classifier_hidden", h) for h in ((sizes,) if isinstance(sizes, int) else sizes))
        self.classifier = mlp((math.prod(self.input_shape),) + sizes + (num_classes,), activation or "softplus",
                              final_activation=False)

    def check_data(self, x, y=None) -> torch.Tensor:
        """DataError for x of the wrong shape, dtype or support, or labels y (if given) that do not match it."""
        self._check_x(x)
        if y is not None:
            self._check_labels(y, x.shape[0])
        return x

    # -- the pieces -------------------------------------------------------------------------------
    def label_prior(self, like: torch.Tensor):
        """p(y) = Cat(1/K): batch [], in ``like``'s dtype and device."""
        return dist.Categorical(logits=like.new_zeros(self.num_classes))

    def classifier_posterior(self, x: torch.Tensor):
        """q_φ(y|x) = Cat(softmax(c_φ(x))): batch_shape ``x.shape[:-len(input_shape)]``."""
        return dist.Categorical(logits=self.classifier(x.flatten(-len(self.input_shape))))

    # -- Pyro model and guide -----------------------------------------------------------------------
    def model(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> None:
        """p(y) p(z) p(x|z,y): y observed when given; registers decoder, likelihood and prior."""
        self._validate(x, y)
        self._register_decoder()
        with self._plate(x):
            y = pyro.sample("y", self.label_prior(x), obs=None if y is None else self.label_index(y))
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood_of(z, y), obs=x)

    def guide(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> None:
        """q(y|x) (enumerated; only when y is absent) and q(z|x,y)."""
        self._validate(x, y)
        self._register_encoder()
        with self._plate(x):
            if y is None:
                pyro.module("classifier", self.classifier)
                y = pyro.sample("y", self.classifier_posterior(x), infer={"enumerate": "parallel"})
            pyro.sample("z", self.posterior(x, y))

    def classifier_model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The auxiliary term: observes y under q_φ(y|x), so its ELBO is Σ_i log q_φ(y_i|x_i)."""
        self._validate(x, y)
        pyro.module("classifier", self.classifier)
        with self._plate(x):
            pyro.sample("y", self.classifier_posterior(x), obs=self.label_index(y))

    def classifier_guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The auxiliary term's guide: no latent."""

    # -- the family protocol ---------------------------------------------------------------------------
    def labeled_terms(self, x: torch.Tensor, y: torch.Tensor, *, num_unlabeled: int,
                      classifier_weight: float = 0.0) -> list:
        """L on the N_l labeled pairs (x ``[N_l, *input_shape]``, y ``[N_l]``), weight 1, and, when
        ``classifier_weight`` α > 0, log q(y|x) weighted α w, w = N_u / N_l (``num_unlabeled`` /
        N_l), so that the labeled minibatch's mean log q counts α times the unlabeled minibatch's
        mean ELBO (the module's J_step): ``[(model, guide, (x, y), 1.0),
        (classifier_model, classifier_guide, (x, y), α w)]``."""
        w = checks.positive_int("num_unlabeled", num_unlabeled) / len(x)
        terms = [(self.model, self.guide, (x, y), 1.0)]
        if classifier_weight > 0:
            terms.append((self.classifier_model, self.classifier_guide, (x, y), classifier_weight * w))
        return terms

    def checkpoint_pairs(self) -> list:
        """The main pair on x alone (q(y|x), q(z|x,y), p(x|z,y)) — it creates every parameter."""
        x = torch.zeros((2,) + self.input_shape, device=self.prior.zero.device)
        return [(self.model, self.guide, (x,))]

    def extra_scores(self, x: torch.Tensor, labels) -> dict:
        """``accuracy``: 1 where q(y|x)'s most probable class is the label, else 0 ([N] float64);
        none without labels."""
        if labels is None:
            return {}
        return {"accuracy": (self.predict(x) == labels.to(x.device)).double()}

    # -- what one does with a trained model ------------------------------------------------------------
    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """q_φ(y|x) as probabilities ``[batch, K]`` (each row sums to 1)."""
        self.check_data(x)
        return self.classifier_posterior(x).probs

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class under q_φ(y|x): int64 ``[batch]``."""
        return self.classify(x).argmax(-1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> dict:
        """The parameters of q(z|x,y), y the predicted class when not given: ``loc`` [batch, L], ..."""
        return super().encode(x, self.predict(x) if y is None else y)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """E[x | z = μ_φ(x, y), y], y the predicted class when not given; shape of x."""
        y = self.predict(x) if y is None else y
        return self.decode_mean(self.encode(x, y)["loc"], y)

    def describe(self) -> str:
        """The model in the lecture notes' notation."""
        lines = super().describe().splitlines()
        return "\n".join([f"p(y)     = Cat(1/{self.num_classes})"] + lines[:3]
                         + ["q(y|x)   = Cat(softmax(c_φ(x)))"] + lines[3:])
