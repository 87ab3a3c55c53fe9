"""Run configuration: one TOML file with ``[data]``, ``[model]`` and ``[train]``.

Every key has a default (``DEFAULTS``); a file or ``--set section.key=value`` overrides it.
Validation happens on load: an unknown section or key, a value of the wrong type, or a name
that is not registered is a ValueError naming the key, what is allowed and what came::

    import = ["my_components"]   # optional: modules (or .py files) that register the user's own
                                 # priors, likelihoods, guides, nets, ELBOs, data sets
    [data]
    dataset = "mnist"        # mnist | fashion-mnist | kmnist | frey | cifar10 | svhn | folder | arrays | ppca | toy
    path = ""                # folder / arrays: the image folder or the .npz/.npy file
    binarize = "dynamic"     # none | static | dynamic
    subset = 0               # first N training images (0 = all)
    [model]
    latent_dim = 50
    hidden = [400]
    prior = "normal"         # any name in pyrovae.PRIORS; options in [model.prior_options]
    [train]
    epochs = 10
    elbo = "trace"           # trace | mean-field | iwae | graph | enum
    gradient = "standard"    # standard | stl (with elbo trace) | dreg (with elbo iwae)
    lr_schedule = "constant" # constant | step | exponential | burda | cosine; options in [train.lr_schedule_options]
    clip_norm = 0.0          # > 0: clip each step's gradient to this total norm
    log = ["csv"]            # what the run writes as it trains: csv | tensorboard | mlflow (pyrovae.app.logs)
    precision = "float32"    # float32 | bf16 (networks under torch.autocast, log-densities in float32)
    fast_step = true         # trace / mean-field: steps without Pyro's trace bookkeeping,
                             # checked equal to the Pyro ELBO first (pyrovae.inference.faststep)
    traced_step = "auto"     # auto | on | off: that step recorded once and replayed as a graph
                             # (pyrovae.inference.tracedstep; auto: pyrovae's own models)
"""
from __future__ import annotations

import copy
import math
import numbers
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import tomli_w

from ..components import ACTIVATIONS, GUIDES, LIKELIHOODS, NETS, PRIORS
from ..data import BINARIZE_MODES, DATASETS
from ..errors import ConfigError, InputError
from ..inference.elbos import ELBOS, GRADIENTS
from ..inference.optim import SCHEDULES, OptimizerSettings
from ..inference.precision import PRECISIONS
from ..inference.tracedstep import MODES as TRACED_MODES
from ..model import FAMILIES
from ..registry import import_components, load_plugins
from .logs import LOGGERS

DEFAULTS: Dict[str, Dict[str, Any]] = {
    "data": {"dataset": "mnist", "binarize": "dynamic", "subset": 0, "test_subset": 0, "data_dir": "",
             "labeled": 0, "path": "", "key": "x", "label_key": "", "image_size": 0, "channels": 0,
             "test_fraction": 0.1, "split_seed": 0, "in_memory": "auto", "workers": 2},
    "model": {"family": "vae", "latent_dim": 50, "hidden": [400], "activation": "", "net": "mlp",
              "prior": "normal", "likelihood": "bernoulli", "guide": "diagonal",
              "prior_options": {}, "likelihood_options": {}, "guide_options": {}, "family_options": {},
              "init_output_bias": False},
    "train": {"epochs": 10, "batch_size": 128, "lr": 1e-3, "elbo": "trace", "num_particles": 1,
              "kl_warmup": 0, "seed": 0, "device": "auto", "classifier_weight": 0.0,
              "lr_schedule": "constant", "lr_schedule_options": {}, "adam_beta1": 0.9, "adam_beta2": 0.999,
              "adam_eps": 1e-8, "clip_norm": 0.0, "gradient": "standard",
              "precision": "float32", "log": ["csv"], "fast_step": True,
              "traced_step": "auto"},
}

#: the top-level key listing the user's own component modules
IMPORT_KEY = "import"
_PLUGINS_LOADED = False

#: keys whose value must be one of a set of names (a function, so registries added later count)
CHOICES = {
    ("data", "dataset"): DATASETS.names,
    ("data", "binarize"): lambda: BINARIZE_MODES,
    ("model", "family"): FAMILIES.names,
    ("model", "prior"): PRIORS.names,
    ("model", "likelihood"): LIKELIHOODS.names,
    ("model", "guide"): GUIDES.names,
    ("model", "net"): NETS.names,
    ("model", "activation"): lambda: [""] + ACTIVATIONS.names(),
    ("train", "elbo"): ELBOS.names,
    ("train", "lr_schedule"): SCHEDULES.names,
    ("train", "gradient"): lambda: list(GRADIENTS),
    ("train", "log"): LOGGERS.names,  # a list: each of its names
    ("train", "precision"): lambda: PRECISIONS,
    ("train", "traced_step"): lambda: list(TRACED_MODES),
}
#: keys whose value must lie in [0, 1)
UNIT_INTERVAL = {("train", "adam_beta1"), ("train", "adam_beta2")}
NON_NEGATIVE = {("data", "subset"), ("data", "test_subset"), ("data", "labeled"), ("train", "seed"),
                ("train", "kl_warmup"), ("train", "classifier_weight"), ("train", "clip_norm"),
                ("train", "adam_beta1")}


def _type_ok(default, value) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(default, list):  # of names where the default lists names, else of integers
        kind = str if default and isinstance(default[0], str) else int
        return isinstance(value, list) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
    return isinstance(value, type(default))


def _type_name(default) -> str:
    if isinstance(default, list) and default and isinstance(default[0], str):
        return "a list of names"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list of integers", dict: "a table"}[type(default)]


def _whole(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


#: [data] keys with a rule of their own: (what is allowed, in words; the test)
DATA_RULES = {
    "in_memory": ("'auto', true or false", lambda v: v == "auto" or isinstance(v, bool)),
    "image_size": ("an integer >= 0 (0 keeps the files' size)", lambda v: _whole(v) and v >= 0),
    "channels": ("0 (as the images are), 1 (grayscale) or 3 (RGB)", lambda v: _whole(v) and v in (0, 1, 3)),
    "workers": ("an integer >= 0 (0 reads in the main process)", lambda v: _whole(v) and v >= 0),
    "split_seed": ("an integer >= 0", lambda v: _whole(v) and v >= 0),
    "test_fraction": ("a number between 0 and 1 (exclusive)",
                      lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 < v < 1),
    "key": ("a non-empty string (the array's name in the .npz)", lambda v: isinstance(v, str) and v != ""),
}


def _check_value(section: str, key: str, value) -> None:
    if section == "data" and key in DATA_RULES:
        allowed, ok = DATA_RULES[key]
        if not ok(value):
            raise ConfigError(f"data.{key} must be {allowed}, got {value!r}")
        return
    default = DEFAULTS[section][key]
    where = f"{section}.{key}"
    if not _type_ok(default, value):
        raise ConfigError(f"{where} must be {_type_name(default)}, got {value!r}")
    if (section, key) in CHOICES:
        _check_choice(where, value, CHOICES[(section, key)]())
    if (section, key) in NON_NEGATIVE and value < 0:
        raise ConfigError(f"{where} must be >= 0, got {value!r}")
    if (section, key) not in NON_NEGATIVE and isinstance(value, numbers.Real) and not isinstance(value, bool) \
            and value <= 0:
        raise ConfigError(f"{where} must be > 0, got {value!r}")
    if (section, key) in UNIT_INTERVAL and not 0 <= value < 1:
        raise ConfigError(f"{where} must be in [0, 1), got {value!r}")
    if isinstance(value, list) and any(not isinstance(v, str) and v <= 0 for v in value):
        raise ConfigError(f"{where} must hold positive integers, got {value!r}")


def _check_choice(where: str, value, names) -> None:
    """A name among ``names``; a list (``train.log``) of distinct ones."""
    allowed = ", ".join(repr(c) for c in names)
    for v in value if isinstance(value, list) else [value]:
        if v not in names:
            what = "list names among" if isinstance(value, list) else "be one of"
            raise ConfigError(f"{where} must {what} {allowed}; got {v!r}" + (f" in {value!r}" if isinstance(value, list)
                                                                            else ""))
    if isinstance(value, list) and len(set(value)) < len(value):
        raise ConfigError(f"{where} names a writer twice: {value!r}")


def _imports(config: dict, base_dir: Optional[Path] = None) -> list:
    """Import the user's component modules (the top-level ``import`` list) and the installed
    plugins (entry points ``pyrovae.components``), so their names validate; the list, with
    ``.py`` paths made absolute."""
    names = config.get(IMPORT_KEY, [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{IMPORT_KEY} must be a list of module names or .py paths, got {names!r}")
    base_dir = Path(base_dir or ".")
    names = [str((base_dir / n).resolve()) if n.endswith(".py") else n for n in names]
    import_components(names, base_dir)
    global _PLUGINS_LOADED
    if not _PLUGINS_LOADED:
        load_plugins()
        _PLUGINS_LOADED = True
    return names


def validate(config: dict, base_dir: Optional[Path] = None) -> dict:
    """Check sections, keys, types and names; return the config completed with defaults.

    The top-level ``import`` list (module names, or ``.py`` paths relative to ``base_dir``) is
    imported first, so the components it registers are valid names.
    """
    config = dict(config)
    imports = _imports(config, base_dir)
    config.pop(IMPORT_KEY, None)
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; allowed: {IMPORT_KEY}, {', '.join(DEFAULTS)}")
    full = {IMPORT_KEY: imports} if imports else {}
    full.update(copy.deepcopy(DEFAULTS))
    for section, values in config.items():
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table, got {values!r}")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise ConfigError(f"unknown key {section}.{key}; allowed keys in [{section}]: "
                                  f"{', '.join(DEFAULTS[section])}")
            _check_value(section, key, value)
            full[section][key] = value
    _check_optimizer(full["train"])
    _check_eight_bit_data(full)
    _check_output_bias(full["model"])
    full["data"]["path"] = _absolute(full["data"]["path"])
    return full


def _absolute(path: str) -> str:
    """data.path made absolute (relative to the current directory), so a run dir's config reads it from anywhere."""
    return str(Path(path).expanduser().absolute()) if path else path


def _check_eight_bit_data(config: dict) -> None:
    """A likelihood of 8-bit grey levels (``eight_bit``: the discretized logistic) needs them: binarized data is refused."""
    likelihood, binarize = config["model"]["likelihood"], config["data"]["binarize"]
    if getattr(LIKELIHOODS.get(likelihood), "eight_bit", False) and binarize != "none":
        raise ConfigError(f"model.likelihood = {likelihood!r} models the 256 grey levels of 8-bit images: set "
                          f"data.binarize = 'none', got {binarize!r}")


def _check_output_bias(m: dict) -> None:
    """model.init_output_bias needs a family with ``init_output_bias`` (the VAE's)."""
    if m["init_output_bias"] and not hasattr(FAMILIES.get(m["family"]), "init_output_bias"):
        raise ConfigError(f"model.init_output_bias = true is supported for model.family = 'vae' only, "
                          f"got {m['family']!r}")


def optimizer_options(t: dict) -> dict:
    """The [train] section's optimizer keys as :func:`pyrovae.train`'s (and
    :class:`~pyrovae.inference.optim.OptimizerSettings`') arguments; ``clip_norm = 0`` is off (None)."""
    return dict(lr=t["lr"], lr_schedule=t["lr_schedule"], lr_schedule_options=t["lr_schedule_options"],
                betas=(t["adam_beta1"], t["adam_beta2"]), eps=t["adam_eps"], clip_norm=t["clip_norm"] or None)


def _check_optimizer(t: dict) -> None:
    """Build the optimizer settings once, so a schedule's unknown or bad option fails on load."""
    try:
        OptimizerSettings(**optimizer_options(t))
    except InputError as e:
        raise ConfigError(f"train.{e}") from None


def parse_override(text: str):
    """``section.key=value`` → (section, key, value); the value is read as TOML, else as a string.
    ``section.table.key=value`` sets one option of a table (key ``table.key``)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set expects section.key=value (e.g. train.epochs=5), got {text!r}")
    path, raw = text.split("=", 1)
    section, key = path.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key, value


def load(path: Optional[Path] = None, overrides: Iterable[str] = (), base: Optional[dict] = None) -> dict:
    """Read a TOML file (or start from ``base``, or the defaults), apply ``--set`` overrides, validate."""
    config: Dict[str, dict] = copy.deepcopy(base or {})
    base_dir = None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            config = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
        base_dir = path.parent
    for text in overrides:
        section, key, value = parse_override(text)
        if not isinstance(config.setdefault(section, {}), dict):
            raise ConfigError(f"--set {text!r}: {section} is not a section")
        table, key = (config[section], key) if "." not in key else _option_table(config[section], key, text)
        table[key] = value
    return validate(config, base_dir)


def _option_table(section: dict, path: str, text: str):
    """(the table, the key) that ``--set section.table.key=value`` sets, e.g. train.lr_schedule_options.gamma."""
    name, key = path.split(".", 1)
    table = section.setdefault(name, {})
    if not isinstance(table, dict) or "." in key:
        raise ConfigError(f"--set {text!r}: {name} is not a table of options")
    section[name] = table = dict(table)
    return table, key


# -- writing ------------------------------------------------------------------------------------
def dumps(config: dict) -> str:
    """The config as TOML text (``tomli_w``; read back by :func:`load` to the same dict)."""
    return tomli_w.dumps(config)
