"""Run configuration: one TOML file with ``[data]``, ``[model]`` and ``[train]``.

Every key has a default (``DEFAULTS``); a file or ``--set section.key=value`` overrides it.
Validation happens on load: an unknown section or key, a value of the wrong type, or a name
that is not registered is a ValueError naming the key, what is allowed and what came::

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

from .data import BINARIZE_MODES, DATASETS
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .nets import ACTIVATIONS, NETS
from .priors import PRIORS
from .elbos import ELBOS

DEFAULTS: Dict[str, Dict[str, Any]] = {
    "data": {"dataset": "mnist", "binarize": "dynamic", "subset": 0, "test_subset": 0, "data_dir": ""},
    "model": {"latent_dim": 50, "hidden": [400], "activation": "", "net": "mlp",
              "prior": "normal", "likelihood": "bernoulli", "guide": "diagonal",
              "prior_options": {}, "likelihood_options": {}, "guide_options": {}},
    "train": {"epochs": 10, "batch_size": 128, "lr": 1e-3, "elbo": "trace", "num_particles": 1,
              "kl_warmup": 0, "seed": 0, "device": "auto"},
}

#: keys whose value must be one of a set of names (a function, so registries added later count)
CHOICES = {
    ("data", "dataset"): lambda: DATASETS,
    ("data", "binarize"): lambda: BINARIZE_MODES,
    ("model", "prior"): PRIORS.names,
    ("model", "likelihood"): LIKELIHOODS.names,
    ("model", "guide"): GUIDES.names,
    ("model", "net"): lambda: sorted(NETS),
    ("model", "activation"): lambda: [""] + sorted(ACTIVATIONS),
    ("train", "elbo"): lambda: list(ELBOS),
}
NON_NEGATIVE = {("data", "subset"), ("data", "test_subset"), ("train", "seed"), ("train", "kl_warmup")}


class ConfigError(ValueError):
    """A configuration file or override that does not validate."""


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


def validate(config: dict) -> dict:
    """Check sections, keys, types and names; return the config completed with defaults."""
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; allowed: {', '.join(DEFAULTS)}")
    full = copy.deepcopy(DEFAULTS)
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
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            config = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
    for text in overrides:
        section, key, value = parse_override(text)
        config.setdefault(section, {})[key] = value
    return validate(config)


# -- writing ------------------------------------------------------------------------------------
def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def dumps(config: dict) -> str:
    """The config as TOML text (read back by :func:`load` to the same dict)."""
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)
