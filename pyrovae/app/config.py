"""Run configuration: one TOML file with ``[data]``, ``[model]`` and ``[train]``.

Every key has a default (``DEFAULTS``); a file or ``--set section.key=value`` overrides it.
Validation happens on load: an unknown section or key, a value of the wrong type, or a name
that is not registered is a ValueError naming the key, what is allowed and what came::

    import = ["my_components"]   # optional: modules (or .py files) that register the user's own
                                 # priors, likelihoods, guides, nets, ELBOs, data sets
    [data]
    dataset = "mnist"        # mnist | fashion-mnist | kmnist | frey | ppca | toy
    binarize = "dynamic"     # none | static | dynamic
    subset = 0               # first N training images (0 = all)
    [model]
    latent_dim = 50
    hidden = [400]
    prior = "normal"         # any name in pyrovae.PRIORS; options in [model.prior_options]
    [train]
    epochs = 10
    elbo = "trace"           # trace | mean-field | iwae | graph
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
from ..errors import ConfigError
from ..inference.elbos import ELBOS
from ..model import FAMILIES
from ..registry import import_components, load_plugins

DEFAULTS: Dict[str, Dict[str, Any]] = {
    "data": {"dataset": "mnist", "binarize": "dynamic", "subset": 0, "test_subset": 0, "data_dir": "",
             "labeled": 0},
    "model": {"family": "vae", "latent_dim": 50, "hidden": [400], "activation": "", "net": "mlp",
              "prior": "normal", "likelihood": "bernoulli", "guide": "diagonal",
              "prior_options": {}, "likelihood_options": {}, "guide_options": {}, "family_options": {}},
    "train": {"epochs": 10, "batch_size": 128, "lr": 1e-3, "elbo": "trace", "num_particles": 1,
              "kl_warmup": 0, "seed": 0, "device": "auto", "classifier_weight": 0.0},
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
}
NON_NEGATIVE = {("data", "subset"), ("data", "test_subset"), ("data", "labeled"), ("train", "seed"),
                ("train", "kl_warmup"), ("train", "classifier_weight")}


def _type_ok(default, value) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(default, list):
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return isinstance(value, type(default))


def _type_name(default) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list of integers", dict: "a table"}[type(default)]


def _check_value(section: str, key: str, value) -> None:
    default = DEFAULTS[section][key]
    where = f"{section}.{key}"
    if not _type_ok(default, value):
        raise ConfigError(f"{where} must be {_type_name(default)}, got {value!r}")
    if (section, key) in CHOICES and value not in CHOICES[(section, key)]():
        allowed = ", ".join(repr(c) for c in CHOICES[(section, key)]())
        raise ConfigError(f"{where} must be one of {allowed}; got {value!r}")
    if (section, key) in NON_NEGATIVE and value < 0:
        raise ConfigError(f"{where} must be >= 0, got {value!r}")
    if (section, key) not in NON_NEGATIVE and isinstance(value, numbers.Real) and not isinstance(value, bool) \
            and value <= 0:
        raise ConfigError(f"{where} must be > 0, got {value!r}")
    if isinstance(value, list) and any(v <= 0 for v in value):
        raise ConfigError(f"{where} must hold positive integers, got {value!r}")


def _imports(config: dict, base_dir: Optional[Path] = None) -> list:
    """Import the user's component modules (the top-level ``import`` list) and the installed
    plugins (entry points ``pyrovae.components``), so their names validate; the list, with
    ``.py`` paths made absolute."""
    names = config.get(IMPORT_KEY, [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{IMPORT_KEY} must be a list of module names or .py paths, got {names!r}")
    base_dir = Path(base_dir or ".")
    names = [str((base_dir / n).resolve()) if n.endswith(".py") else n for n in names]
    import_components(names)
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
    return full


def parse_override(text: str):
    """``section.key=value`` → (section, key, value); the value is read as TOML, else as a string."""
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
        config[section][key] = value
    return validate(config, base_dir)


# -- writing ------------------------------------------------------------------------------------
def dumps(config: dict) -> str:
    """The config as TOML text (``tomli_w``; read back by :func:`load` to the same dict)."""
    return tomli_w.dumps(config)
