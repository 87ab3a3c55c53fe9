"""ELBO and log-likelihood estimators, per datapoint, in nats.

Every estimator takes a Pyro ``model`` and ``guide`` and their arguments for a batch —
``mc_elbo(vae.model, vae.guide, x)``, ``mc_elbo(cvae.model, cvae.guide, x, y)``, any pair written by
hand, the batch first in each tensor, the observed sites inside a ``pyro.plate`` over it — with
the estimator's own options keyword-only (``num_particles=``, ``num_samples=``, ``chunk_size=``,
``data_plate=``), and returns a tensor of shape ``[batch]``: one log-probability per datapoint
(ELBO ≤ log p(x); negative for images).

With r particles z⁽ʲ⁾ ~ q(z|x) drawn in one vectorized pass (an outer plate over particles),
the log importance weight of datapoint i is

    log w_ij = Σ_{model sites} log p(· | ·) − Σ_{guide sites} log q(· | ·)
             = log p(x_i, z_ij) − log q(z_ij | x_i),

and ``mc_elbo`` = 1/r Σ_j log w_ij (what Trace_ELBO computes), ``iwae_bound`` =
log 1/k Σ_j w_ij (Burda et al. 2015), ``analytic_elbo`` replaces log p(z) − log q(z) by −KL(q ‖ p)
at every latent site whose KL has a closed form (as TraceMeanField_ELBO does).

Arguments. The positional arguments after ``model`` and ``guide`` are the model's data, passed to
it as they are; a plain Python number among them is refused (``mc_elbo(model, guide, x, 10)``
names ``num_particles=10``): a model argument that is a number goes by keyword.

Modes. An estimator runs the pair's networks in the mode the caller left them: call
``vae.eval()`` first (Dropout off, BatchNorm on its running statistics) for the model's ELBO;
in training mode BatchNorm normalises by the batch's statistics and updates its running ones, as
one forward pass of Pyro's own ELBO does. pyrovae's trainer and CLI switch to evaluation mode
themselves and restore the mode they found.

Vectorized particles are checked first: on the first call for a pair and input shape, 2
particles drawn in one pass are compared with the same draws run one at a time
(:func:`pyrovae.inference.vectorize.particles_agree`); where they differ — a network that does
not broadcast over a leading dimension, e.g. ``nn.BatchNorm1d(B)`` at batch size B — every
particle is run one at a time, with a warning naming the pair. Checks leave parameters, buffers,
modes and the random state as they found them.

The estimators give the ELBO of the model itself: site scales (``poutine.scale``, a plate's
subsample scaling to the data-set size) are ignored; masks are honoured. A log-density of a
site outside the data plate is shared equally among the datapoints.

Discrete latents. A guide site that is not enumerated — discrete or continuous — is sampled, as
above. A guide site marked ``infer={"enumerate": "parallel"}`` (``pyro.infer.config_enumerate``)
is summed over its support exactly, as ``TraceEnum_ELBO`` sums it: the guide runs under
``poutine.enum(first_available_dim=-(nesting + 2))`` (the particle plate sits at −(nesting + 1)),
so each enumerated site y takes all its values e along a dimension of its own left of the
particle dimension, and every log-density downstream of it (z ~ q(z|x, y), log p(x|y, z), ...)
carries that dimension. With

    T_e     = Σ_{model sites} log p − Σ_{guide sites} log q      (log q(y_e|x) included)
            = log p(x, y_e, z_e) − log q(y_e|x) − log q(z_e|x, y_e),          shape [E..., r, B]
    log q_e = Σ_{enumerated guide sites} log q(y_e|x)      (the joint q(e) of all of them)

the estimators are, per particle j and datapoint i,

* ``mc_elbo``, ``analytic_elbo``, ``elbo_parts``: Σ_e q(e) T_e (each part likewise), the exact
  expectation over the enumerated sites — TraceEnum_ELBO's estimate; the closed-form KL of a
  continuous site given y (where registered) enters T_e as −KL(q(z|x, y_e) ‖ p(z|y_e)); an
  enumerated site's own KL needs no closed form: Σ_e q(e)(log p(y_e) − log q(y_e)) is exact;
* ``log_weights`` and ``iwae_bound``: the importance weight of one particle with y summed out,
  w = Σ_e p(x, y_e, z_e)/q(z_e|x, y_e), i.e. log w = logsumexp_e (T_e + log q_e) — an unbiased
  estimate of p(x), so IWAE_k → log p(x) as k → ∞ (and with no continuous latent, log w = log
  p(x) exactly). By Jensen, log w ≥ Σ_e q(e) T_e particle by particle.

Sites the *model* enumerates (``infer={"enumerate": "parallel"}`` on a model site m the guide
lacks, e.g. a mixture's assignment) are summed out of the joint, as TraceEnum_ELBO sums them: the
model is replayed under ``poutine.enum``, which gives m dimensions left of the guide's, and
T_e = logsumexp_m [Σ_{model sites} log p](m, e) − Σ_{guide sites} log q, then as above. In
``elbo_parts`` the reconstruction is then Σ_m p(m | x, z, e) log p(x | ·) and the KL the rest;
a closed-form KL that depends on m cannot stand inside the sum over m, and such a site's
log p − log q is sampled instead (it is not among :func:`analytic_sites`). So is a latent z
whose model parents the guide may draw after it (a latent the guide samples after z and the model
before z, :func:`~pyrovae.inference.traces.out_of_order`): the closed form holds only when z's
parents in the model are not its descendants in the guide (Burda's q(z1|x) q(z2|z1) for a
two-layer model p(z2) p(z1|z2): z1's term is sampled, z2's KL stays closed).

An enumerated site (of the guide or the model) must lie in the data plate and no other (one
variable per datapoint, so the sum is per datapoint), and a site outside the data plate may not
depend on one; sequential and Monte Carlo (``num_samples``) enumeration are not supported. Each
is refused with a :class:`PairError` naming the site. A pair that enumerates nothing is run
exactly as before (the same draws).
"""
from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from .. import checks
from ..errors import InputTypeError, PairError, PyrovaeError
from .arguments import batch_size_of
from .pairs import check_pair_on, check_reparameterized
from .vectorize import particles_agree
from .traces import (AUXILIARY, GUIDE, KL, OBSERVED, PARTICLES, enum_traces, kl_or_none, log_density, nesting_of,
                     out_of_order, particle_traces, sample_sites, site_terms, traces)

#: particles × batch rows evaluated at once by the chunked estimators: always on a GPU, and the
#: most on a CPU (bounds memory).
MAX_ROWS = 32768
#: the fewest rows a CPU chunk gets (each chunk traces the pair once: about a millisecond)
MIN_ROWS = 1024
#: the last-level cache assumed where the system does not say (bytes)
DEFAULT_CACHE = 32 << 20


def cache_bytes() -> int:
    """The size of the CPU's largest cache (Linux sysfs, cpu0), else :data:`DEFAULT_CACHE`."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip().upper()
            sizes.append(int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[text[-1]] if text[-1] in "KMG"
                         else int(text))
        except (OSError, ValueError, KeyError):
            continue
    return max(sizes, default=DEFAULT_CACHE)


def rows_per_chunk(pair_traces, batch: int, device: torch.device) -> int:
    """particles × batch rows per chunk. On a GPU :data:`MAX_ROWS`; on a CPU as many as let the
    widest per-datapoint tensor of the pair (the largest site value, e.g. x's 784 pixels, which is
    also the width of the decoder's output) fill the largest cache once: rows = cache / (4 bytes ×
    width), within [MIN_ROWS, MAX_ROWS]. So the decoder's output and the log-density built from it
    stay in cache between the operations that read them, and a chunk is still large enough for
    an efficient matrix product and to amortise the tracing. (32 MiB and 784 pixels: 10,700.)"""
    if device.type != "cpu":
        return MAX_ROWS
    width = max((s["value"].numel() // max(batch, 1) for tr in pair_traces for s in sample_sites(tr).values()
                 if torch.is_tensor(s["value"])), default=1)
    return min(MAX_ROWS, max(MIN_ROWS, cache_bytes() // (4 * max(width, 1))))


class _Layout:
    """Where the particle and data dimensions sit in a site's batch shape: the particle dimension
    at −(nesting + 1), enumeration dimensions (if any) left of it, the data plate's at ``data_dim``."""

    def __init__(self, model_trace, batch: int, nesting: int, data_plate: Optional[str]):
        self.batch, self.nesting = batch, nesting
        self.data_dim = self._find_data_dim(model_trace, data_plate)

    def _find_data_dim(self, model_trace, data_plate):
        found = {}
        for site in sample_sites(model_trace).values():
            if not site["is_observed"]:
                continue
            for f in site["cond_indep_stack"]:
                if f.vectorized and f.name != PARTICLES and site["fn"].batch_shape[f.dim] == self.batch:
                    found[f.name] = f.dim
        if data_plate is not None:
            if data_plate not in found:
                raise PairError(f"data_plate {data_plate!r} is not a plate of size {self.batch} around an "
                                 f"observed site; plates found: {sorted(found) or 'none'}")
            return found[data_plate]
        if len(found) == 1:
            return next(iter(found.values()))
        if "data" in found:
            return found["data"]
        raise PairError(
            f"could not tell which plate runs over the batch of {self.batch}: the model's observed sites "
            f"must be inside a pyro.plate over x's first dimension; candidates {sorted(found) or 'none'} "
            f"(pass data_plate=NAME)")

    def enum_dims(self, log_density: torch.Tensor) -> int:
        """How many enumeration dimensions (left of the particle dimension) a log-density has."""
        return max(0, log_density.dim() - (self.nesting + 1))

    def in_data_plate(self, site) -> bool:
        """Whether a site lies in the data plate."""
        return any(f.vectorized and f.name != PARTICLES and f.dim == self.data_dim for f in site["cond_indep_stack"])

    def per_datapoint(self, log_density: torch.Tensor) -> torch.Tensor:
        """Reduce a site's log-density (batch-shaped) to ``[particles, batch]``, or to
        ``[E..., particles, batch]`` when it has enumeration dimensions E (kept as they are): summed
        over the batch dimensions right of the particle dimension, except the data plate's."""
        t = log_density.reshape((1,) * (self.nesting + 1 - log_density.dim()) + log_density.shape)
        particle_axis = self.enum_dims(t)
        data_axis = t.dim() + self.data_dim
        other = [a for a in range(particle_axis + 1, t.dim()) if a != data_axis]
        t = t.sum(other) if other else t
        if t.shape[-1] != self.batch:
            t = t / self.batch  # a site outside the data plate: shared among the datapoints
        return t.expand(t.shape[:-1] + (self.batch,))


# -- the log weights ------------------------------------------------------------------------------
def _enumerate_dim(site) -> Optional[int]:
    """The dimension ``poutine.enum`` gave a site's values, or None (a site not enumerated)."""
    return (site.get("infer") or {}).get("_enumerate_dim")


def _site_terms(model_trace, guide_trace, layout: _Layout, analytic: bool):
    """Per-datapoint terms of the ELBO, each [particles, batch] ([E..., particles, batch] where
    enumerated sites add dimensions E), keyed by what they are: the terms of
    :func:`~pyrovae.inference.traces.site_terms`, in its order, with each site's log density reduced
    per datapoint and −KL where ``analytic`` and a closed form stands.

    Returns ``({"reconstruction": [...], "latent": [...], "enumerated": [...]}, analytic site
    names in the guide's order, model_dims)``: the observed sites' log p(x|·); for each latent site
    log p(z|·) and −log q(z|·) (or −KL where analytic); log q(y|·) of each enumerated guide site
    (empty when there is none); and the dimensions of the per-datapoint terms over which the model enumerates its own
    sites (to be summed out, :func:`_marginal`).
    """
    model_sites, guide_sites = sample_sites(model_trace), sample_sites(guide_trace)
    enumerated = [n for n, s in guide_sites.items() if _enumerate_dim(s) is not None]
    in_model = {n: s for n, s in model_sites.items() if n not in guide_sites and _enumerate_dim(s) is not None}
    # a site's dimension d (left of the particle dimension −(nesting + 1)) is d + nesting − 1 per datapoint
    model_dims = sorted({_enumerate_dim(s) + layout.nesting - 1 for s in in_model.values()})
    every = enumerated + list(in_model)

    def term(site, tensor):
        if every and layout.enum_dims(tensor) and not layout.in_data_plate(site) \
                and tensor.shape[:layout.enum_dims(tensor)].numel() > 1:
            raise PairError(f"site '{site['name']}' lies outside the data plate but depends on the enumerated site(s) "
                            f"{', '.join(repr(n) for n in every)}: its log-density cannot be shared among "
                            f"the datapoints; sample the discrete site instead (no infer={{'enumerate': ...}})")
        return layout.per_datapoint(tensor)

    def on_model_dims(t):
        return any(t.dim() >= -d and t.shape[d] > 1 for d in model_dims)

    def per_datapoint(site):
        return term(site, log_density(site))

    unordered = out_of_order(model_sites, guide_sites) if analytic else {}

    def closed_form(guide_site, model_site):
        # an enumerated site's expectation is exact already: Σ_e q(e)(log p − log q) = −KL; a KL
        # that depends on a site the model enumerates cannot stand inside the sum over that site;
        # nor one whose model parents the guide may draw from it (traces.out_of_order)
        sampled = guide_site["name"] in enumerated or guide_site["name"] in unordered
        kl = kl_or_none(guide_site, model_site) if analytic and not sampled else None
        kl = None if kl is None else term(guide_site, kl)
        return None if kl is None or on_model_dims(kl) else kl

    terms = {"reconstruction": [], "latent": [], "enumerated": []}
    analytic_names = []
    for kind, name, value in site_terms(model_sites, guide_sites, per_datapoint, per_datapoint, closed_form):
        terms["reconstruction" if kind == OBSERVED else "latent"].append(value)
        if kind == KL:
            analytic_names.append(name)
        elif kind in (GUIDE, AUXILIARY) and name in enumerated:
            terms["enumerated"].append(-value)  # log q(y|·)
    return terms, [n for n in guide_sites if n in analytic_names], model_dims


def _enumerates(model_trace, guide_trace, layout: _Layout) -> bool:
    """Whether the pair enumerates sites (the pair's checked traces, ``layout`` theirs): guide
    sites marked ``infer={"enumerate": "parallel"}``, and model sites so marked that the guide lacks.
    PairError for what the estimators cannot sum: sequential enumeration, a marked site without a
    finite support, one marked for Monte Carlo enumeration (num_samples), one outside the data
    plate or also in another plate."""
    model_sites, guide_sites = sample_sites(model_trace), sample_sites(guide_trace)
    marked = [(n, s) for n, s in guide_sites.items() if not s["is_observed"]]
    marked += [(n, s) for n, s in model_sites.items() if not s["is_observed"] and n not in guide_sites]
    problems, found = [], False
    for name, site in marked:
        how = (site.get("infer") or {}).get("enumerate")
        if not how:
            continue
        whose = "" if name in guide_sites else "the model's "
        if how != "parallel":
            problems.append(f"{whose}site '{name}' is marked infer={{'enumerate': {how!r}}}: the estimators sum "
                            f"enumerated sites in parallel only; mark it 'parallel'")
        elif not getattr(site["fn"], "has_enumerate_support", False):
            problems.append(f"{whose}site '{name}' is marked for enumeration but its distribution "
                            f"({type(site['fn']).__name__}) has no finite support to enumerate")
        elif site["infer"].get("num_samples") is not None:
            problems.append(f"{whose}site '{name}' is marked for Monte Carlo enumeration (num_samples): the "
                            f"estimators sum an enumerated site over its whole support only")
        else:
            frames = [f for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLES]
            if [f.dim for f in frames] != [layout.data_dim]:
                where = f"in plates {', '.join(repr(f.name) for f in frames)}" if frames else "outside every plate"
                problems.append(f"{whose}site '{name}' is enumerated {where}: the estimators sum an enumerated "
                                f"site only when it lies in the data plate and no other (one discrete variable per "
                                f"datapoint)" + ("; sample it instead (no infer={'enumerate': ...})" if not whose
                                                 else ""))
            found = True
    if problems:
        raise PairError("; ".join(problems))
    return found


def _check_call(model, args: tuple, kwargs: dict, option: str = "num_particles") -> None:
    """InputTypeError when the model cannot take these arguments (options are keyword-only), or when
    a positional argument is a plain Python number: the positional arguments after the pair are
    the model's data (tensors, or None), so ``mc_elbo(model, guide, x, 10)`` is refused with a line
    naming ``option`` (a model argument that is a number is passed by keyword)."""
    for i, value in enumerate(args):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise InputTypeError(f"positional argument {i + 1} after the model and guide is the number {value!r}; "
                                 f"the estimators pass every positional argument to the model as data: write "
                                 f"{option}={value!r} (options are keyword-only; a model argument that is a number "
                                 f"goes by keyword)")
    try:
        signature = inspect.signature(model)
    except (TypeError, ValueError):  # a callable whose signature Python cannot read: let it run
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as e:
        raise InputTypeError(f"the model cannot be called with these arguments ({e}); the estimators' options "
                             f"(num_particles, num_samples, chunk_size, data_plate) are keyword-only") from None


_warned_sequential = set()


def _vectorized(model, guide, n, nesting, args, kwargs, enumerate_=False):
    """Traces of n particles in one pass (the pair's marked sites enumerated with ``enumerate_``,
    :func:`~pyrovae.inference.traces.enum_traces`); None when the pair's code cannot run vectorized."""
    try:
        if enumerate_:
            return enum_traces(model, guide, n, nesting, *args, **kwargs)
        return particle_traces(model, guide, n, nesting, *args, **kwargs)
    except (RuntimeError, ValueError, IndexError) as e:
        if isinstance(e, PyrovaeError):
            raise
        key = getattr(model, "__qualname__", repr(model))
        if key not in _warned_sequential:
            _warned_sequential.add(key)
            warnings.warn(f"the pair cannot run its particles vectorized ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); running them one at a time", stacklevel=4)
        return None


def _chunked_terms(model, guide, args, kwargs, num_particles, analytic, data_plate, chunk_size=None,
                   option="num_particles", pathwise: Optional[str] = None) -> Iterator[Tuple[Dict[str, torch.Tensor], List[str]]]:
    """Yield (Σ terms, analytic site names) for chunks of n particles: ``reconstruction`` and
    ``latent`` [n, batch] (a plain 0.0 when no site is of that kind); ``enumerated``, Σ log q of
    the enumerated guide sites, or None when the guide enumerates none; ``model_dims``, the
    dimensions of the sites the model enumerates (a list, empty when none). With enumerated sites
    the terms are [E..., n, batch]: reduce them with :func:`_marginal`, then :func:`_expected` or
    :func:`_importance`.

    The pair is first checked (:func:`pyrovae.inference.pairs.check_pair_on`: a latent without a
    guide site, an extra guide site, shapes and supports; :func:`_enumerates`). Particles are drawn
    n at a time in a plate left of the pair's plates; a pair whose code cannot run so
    (shape-dependent indexing) is run one particle at a time, with a warning once.
    """
    _check_call(model, args, kwargs, option)
    batch = batch_size_of(args, kwargs)
    checked = check_pair_on(model, guide, *args, **kwargs)
    nesting = nesting_of(checked)
    enumerate_ = _enumerates(*checked, _Layout(checked[0], batch, nesting, data_plate))
    if pathwise is not None:
        check_reparameterized(checked[1], pathwise, summed=True)
    if chunk_size is None:
        first = next(v for v in list(args) + list(kwargs.values()) if torch.is_tensor(v))
        chunk = max(1, rows_per_chunk(checked, batch, first.device) // max(batch, 1))
        chunk -= chunk % 16 if chunk >= 16 else 0  # torch draws normals 16 at a time: keep one pass's draws
    else:
        chunk = checks.positive_int("chunk_size", chunk_size)
    vectorize = particles_agree(model, guide, args, kwargs, nesting, enumerate_)
    for start in range(0, num_particles, chunk):
        n = min(chunk, num_particles - start)
        found = _vectorized(model, guide, n, nesting, args, kwargs, enumerate_) if vectorize else None
        if found is not None:
            runs = [found]
        elif enumerate_:
            runs = [enum_traces(model, guide, None, nesting, *args, **kwargs) for _ in range(n)]
        else:
            runs = [traces(model, guide, *args, **kwargs) for _ in range(n)]
        vectorize = found is not None
        for model_trace, guide_trace in runs:
            layout = _Layout(model_trace, batch, nesting, data_plate)
            terms, names, model_dims = _site_terms(model_trace, guide_trace, layout, analytic)
            sums = {kind: sum(t) if t else 0.0 for kind, t in terms.items()}
            sums["enumerated"] = sums["enumerated"] if terms["enumerated"] else None
            sums["model_dims"] = model_dims
            yield sums, names


def _marginal(terms) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(T, reconstruction, latent) with the sites the model enumerates summed out of the joint:
    T = logsumexp_m (reconstruction + latent), reconstruction = Σ_m p(m | x, z, e) log p(x | ·), and
    latent = T − reconstruction. Without such sites, (reconstruction + latent, reconstruction, latent)."""
    recon, latent, dims = terms["reconstruction"], terms["latent"], terms["model_dims"]
    total = recon + latent
    if not dims:
        return total, recon, latent
    total = total.reshape((1,) * max(0, -min(dims) - total.dim()) + total.shape)
    log_norm = torch.logsumexp(total, dims, keepdim=True)
    if torch.is_tensor(recon):
        post = (total - log_norm).exp()
        recon = torch.where(post > 0, post * recon, torch.zeros((), dtype=post.dtype, device=post.device)).sum(dims)
    total = log_norm.squeeze(dims)
    return total, recon, total - recon


def _expected(term, log_q):
    """Σ_e q(e) · term_e over the enumeration dimensions: [n, batch] (``term`` itself without them).

    ``log_q`` = Σ log q of the enumerated sites, [E..., n, batch], or None. Values of zero
    probability contribute nothing (whatever their term)."""
    if log_q is None or not torch.is_tensor(term):
        return term
    shape = torch.broadcast_shapes(term.shape, log_q.shape)
    q = log_q.exp()
    weighted = torch.where(q > 0, q * term, torch.zeros((), dtype=q.dtype, device=q.device))
    return weighted.expand(shape).reshape((-1,) + shape[-2:]).sum(0)


def _importance(log_w, log_q):
    """logsumexp_e (log_w_e + log q_e) over the enumeration dimensions: [n, batch], the log weight
    with the enumerated sites summed out (``log_w`` itself when there are none)."""
    if log_q is None:
        return log_w
    total = log_w + log_q
    return torch.logsumexp(total.reshape((-1,) + total.shape[-2:]), 0)


def log_weights(model, guide, *args, num_particles: int = 1, analytic: bool = False,
                data_plate: Optional[str] = None, chunk_size: Optional[int] = None, **kwargs) -> torch.Tensor:
    """log w = log p(x, z) − log q(z|x) for r particles z ~ q(z|x): shape ``[r, batch]``.

    ``model(*args, **kwargs)`` and ``guide(*args, **kwargs)`` are called on the batch. With
    ``analytic=True`` the latent sites with a closed-form KL contribute −KL(q ‖ p) instead.
    With enumerated guide sites y (module docstring), log w = logsumexp_e [log p(x, y_e, z_e) −
    log q(z_e|x, y_e)], y summed out (and the sites the model enumerates summed out of p); with
    ``analytic=True`` each row is instead the particle's ELBO Σ_e q(e) T_e, so that the mean of the
    rows is :func:`analytic_elbo` in either case; the networks run in the mode the caller left them (``.eval()`` for the model's ELBO; module docstring).
    """
    checks.positive_int("num_particles", num_particles)
    reduce = _expected if analytic else _importance
    return torch.cat([_rows(reduce(_marginal(t)[0], t["enumerated"]), args, kwargs)
                      for t, _ in _chunked_terms(model, guide, args, kwargs, num_particles, analytic, data_plate,
                                                 chunk_size)])


def _elbo_rows(model, guide, args, kwargs, num_particles, analytic, data_plate) -> torch.Tensor:
    """Each particle's ELBO, [r, batch]: log w, or Σ_e q(e) T_e with enumerated sites."""
    checks.positive_int("num_particles", num_particles)
    return torch.cat([_rows(_expected(_marginal(t)[0], t["enumerated"]), args, kwargs)
                      for t, _ in _chunked_terms(model, guide, args, kwargs, num_particles, analytic, data_plate)])


# -- the estimators --------------------------------------------------------------------------------
def mc_elbo(model, guide, *args, num_particles: int = 1, data_plate: Optional[str] = None, **kwargs) -> torch.Tensor:
    """Monte Carlo ELBO, [batch]: 1/r Σ_j [log p(x, z_j) − log q(z_j|x)], z_j ~ q(z|x).

    The estimate Trace_ELBO computes (without site scales), r = ``num_particles`` per datapoint;
    ``model(*args, **kwargs)``, e.g. ``mc_elbo(cvae.model, cvae.guide, x, y, num_particles=10)``.
    Enumerated guide sites y are summed exactly, 1/r Σ_j Σ_e q(y_e|x) [log p(x, y_e, z_je) −
    log q(y_e|x) − log q(z_je|x, y_e)] (the estimate TraceEnum_ELBO computes), sites the model
    enumerates are summed out of p (module docstring); others are sampled. As in every estimator,
    the networks run in the mode the caller left them (``.eval()`` for the model's ELBO; module docstring).
    """
    return _elbo_rows(model, guide, args, kwargs, num_particles, False, data_plate).mean(0)


def analytic_elbo(model, guide, *args, num_particles: int = 1, data_plate: Optional[str] = None,
                  **kwargs) -> torch.Tensor:
    """ELBO with closed-form KL terms, [batch]: 1/r Σ_j log p(x|z_j) − KL(q(z|x) ‖ p(z)).

    Latent sites whose (guide, prior) pair has a registered ``kl_divergence`` use it (as
    TraceMeanField_ELBO does); the others are estimated by Monte Carlo. See :func:`analytic_sites`.
    Enumerated guide sites are summed exactly, each weighted by q(e), as in :func:`mc_elbo`; a
    site whose KL depends on a site the model enumerates is estimated by Monte Carlo; the networks run in the mode the caller left them (``.eval()`` for the model's ELBO; module docstring).
    """
    return _elbo_rows(model, guide, args, kwargs, num_particles, True, data_plate).mean(0)


def analytic_sites(model, guide, *args, data_plate: Optional[str] = None, **kwargs) -> List[str]:
    """Names of the latent sites whose KL :func:`analytic_elbo` computes in closed form (not the
    enumerated ones: their sum over the support is exact already)."""
    with torch.no_grad():
        _, names = next(_chunked_terms(model, guide, args, kwargs, 1, True, data_plate))
    return names


def elbo_parts(model, guide, *args, num_particles: int = 1, data_plate: Optional[str] = None,
               **kwargs) -> Dict[str, torch.Tensor]:
    """The ELBO split as in the notes, each [batch]: ``elbo = reconstruction − kl``.

    ``reconstruction`` = 1/r Σ_j log p(x | z_j) (the observed sites), ``kl`` = KL(q ‖ p) of the
    latent sites, in closed form where registered (as :func:`analytic_elbo`), else by Monte Carlo.
    Enumerated guide sites are summed exactly: each part is weighted by q(e) (module docstring);
    the networks run in the mode the caller left them (``.eval()`` for the model's ELBO; module docstring).
    """
    checks.positive_int("num_particles", num_particles)
    recon, latent = [], []
    for t, _ in _chunked_terms(model, guide, args, kwargs, num_particles, True, data_plate):
        _, reconstruction, rest = _marginal(t)
        recon.append(_rows(_expected(reconstruction, t["enumerated"]), args, kwargs))
        latent.append(_rows(_expected(rest, t["enumerated"]), args, kwargs))
    recon, kl = torch.cat(recon).mean(0), -torch.cat(latent).mean(0)
    return {"elbo": recon - kl, "reconstruction": recon, "kl": kl}


def _rows(term, args, kwargs):
    """A term as [particles, batch] (a model with no site of a kind gives a plain 0.0)."""
    if torch.is_tensor(term):
        return term
    first = next(v for v in list(args) + list(kwargs.values()) if torch.is_tensor(v))
    return first.new_zeros(1, batch_size_of(args, kwargs), dtype=torch.get_default_dtype()
                           if not first.is_floating_point() else first.dtype)


def iwae_bound(model, guide, *args, num_samples: int = 5000, data_plate: Optional[str] = None,
               chunk_size: Optional[int] = None, grad: bool = False, **kwargs) -> torch.Tensor:
    """Importance-weighted bound log 1/k Σ_j p(x, z_j)/q(z_j|x), z_j ~ q(z|x): shape [batch].

    Burda et al. (2015): ELBO = IWAE_1 ≤ IWAE_k ≤ IWAE_{k+1} ≤ log p(x), → log p(x) as k → ∞.
    Enumerated guide sites y are summed out of each weight, w_j = Σ_e p(x, y_e, z_je)/q(z_je|x, y_e)
    (still unbiased for p(x); exactly p(x) when y is the only latent); others are sampled.
    The k samples are processed in chunks of ``chunk_size`` particles with a running
    log-sum-exp, so memory stays bounded for k = 5000; the default fills the CPU's cache
    (:func:`rows_per_chunk`: about 10,700 particle × batch rows for 784-pixel images and a 32 MiB
    cache; 32768 on a GPU), rounded down to a multiple of 16 particles. torch draws normals 16 at a
    time, so such chunks draw what one vectorized pass over all k draws (Pyro's
    ``vectorized_importance_weights`` with the same seed; tests/test_eval_speed_paths.py). Runs without
    gradients unless ``grad=True`` (to train on it, use ``RenyiELBO(alpha=0)``); that gradient is
    path-wise, so a sampled guide site without ``rsample`` (a discrete one not enumerated) is then
    refused with a :class:`PairError` naming it. Like every estimator it runs the pair in the
    modules' current mode (module docstring).
    """
    checks.positive_int("num_samples", num_samples)
    total = None
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        for t, _ in _chunked_terms(model, guide, args, kwargs, num_samples, False, data_plate, chunk_size,
                                   "num_samples", "iwae_bound(grad=True)" if grad else None):
            lse = torch.logsumexp(_rows(_importance(_marginal(t)[0], t["enumerated"]), args, kwargs), 0)
            total = lse if total is None else torch.logaddexp(total, lse)
    return total - math.log(num_samples)


def closed_form_elbo(vae, x, *, num_particles: int = 1, eps: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The lecture notes' loss, written by hand with no Pyro inference code: shape [batch].

    ELBO(x) = 1/r Σ_j log p(x | z_j) − KL,   z_j = μ + σ ⊙ ε_j,  ε_j ~ N(0, I)
    KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_l (μ_l² + σ_l² − log σ_l² − 1)

    ``vae`` is a :class:`pyrovae.VAE` with ``prior="normal"`` and ``guide="diagonal"``, or any
    object of the same structure with two methods: ``posterior_params(x) -> (μ, σ)``, each
    [batch, L], and ``log_likelihood(z, x) -> [..., batch]`` (log p(x|z) written by hand: minus
    the binary cross-entropy for Bernoulli, the Gaussian log-density for Gaussian, ...).
    ``eps`` [r, batch, L] fixes the noise; otherwise it is drawn like Pyro's ``rsample``, so the
    same seed gives the draws of Pyro's ELBOs.
    """
    missing = [m for m in ("posterior_params", "log_likelihood") if not callable(getattr(vae, m, None))]
    if missing:
        raise InputTypeError(f"closed_form_elbo needs an object with posterior_params(x) and log_likelihood(z, x); "
                        f"{type(vae).__name__} lacks {', '.join(missing)}")
    if hasattr(vae, "check_closed_form"):
        vae.check_closed_form()
    mu, sigma = vae.posterior_params(x)
    if eps is None:
        eps = torch.empty((checks.positive_int("num_particles", num_particles),) + mu.shape,
                          dtype=mu.dtype, device=mu.device).normal_()
    z = mu + sigma * eps
    kl = 0.5 * (mu ** 2 + sigma ** 2 - torch.log(sigma ** 2) - 1).sum(-1)
    return vae.log_likelihood(z, x).mean(0) - kl
