"""Run configuration: one TOML file with ``[data]``, ``[model]`` and ``[train]``, and an optional top-level ``import``.

Each section's keys are the fields of settings classes (:data:`SECTIONS`), each declared once
with :func:`pyrovae.schema.setting` where the layer that reads it lives: the trainer's in
:mod:`pyrovae.inference.settings` and :class:`~pyrovae.inference.optim.OptimizerSettings`, the
data sets' in :class:`~pyrovae.data.sets.DataOptions`, the app's own here. From them come
:data:`DEFAULTS`, the validation on load (an unknown section or key, a value of the wrong type,
out of range or not a registered name is a ConfigError naming the key, what is allowed and what
came), the reading of ``--set section.key=value`` (:func:`parse_override`) and the key table of
docs/configs.md (:func:`key_table`; ``python -m pyrovae.app.config`` prints it)::

    import = ["my_components"]   # optional: modules (or .py files) that register the user's own components
    [data]
    dataset = "mnist"
    [model]
    latent_dim = 50
    prior = "normal"             # options in [model.prior_options]
    [train]
    epochs = 10
    lr_schedule = "constant"     # options in [train.lr_schedule_options]
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import tomli_w

from ..components import ACTIVATIONS, GUIDES, LIKELIHOODS, NETS, PRIORS
from ..data import BINARIZE_MODES, DATASETS
from ..data.sets import DataOptions, StreamOptions
from ..errors import ConfigError, InputError
from ..inference.optim import OptimizerSettings
from ..inference.settings import RunSettings, StepSettings
from ..model import FAMILIES
from ..registry import import_components, load_plugins
from ..schema import Rule, Settings, defaults, rules, setting
from .logs import LOGGERS


@dataclass
class DataKeys(Settings):
    """The [data] keys the app reads itself (the data sets' own options: :class:`~pyrovae.data.sets.DataOptions`)."""

    dataset: str = setting("mnist", "mnist | fashion-mnist | kmnist | frey | cifar10 | svhn | folder | arrays | ppca "
                           "| toy (pyrovae.DATASETS)", choices=DATASETS)
    binarize: str = setting("dynamic", "none | static | dynamic (image sets only; ignored for ppca and toy)",
                            choices=BINARIZE_MODES)
    subset: int = setting(0, "the first N training examples (0 = all)", low=0)
    test_subset: int = setting(0, "the first N test examples (0 = all)", low=0)
    data_dir: str = setting("", "where the files are; \"\" = --data-dir, else $PYROVAE_DATA_DIR, else "
                            "~/.cache/pyrovae")
    labeled: int = setting(0, "family \"m2\": how many training labels to keep (balanced over the classes, drawn "
                           "with train.seed)", low=0)


@dataclass
class ModelKeys(Settings):
    """The [model] keys: what :func:`pyrovae.app.run.build_model` gives the family's constructor."""

    family: str = setting("vae", "vae | cvae | m2 | 2layer (pyrovae.model.FAMILIES; model families)", choices=FAMILIES)
    latent_dim: int = setting(50, "L, the size of z", low=0, open="low")
    hidden: list = setting([400], "hidden layer sizes of the MLP encoder (the decoder mirrors them)")
    activation: str = setting("", "relu | softplus | tanh | elu | leaky-relu | gelu | sigmoid; \"\" = the net's "
                              "default (softplus for mlp, relu for conv)", choices=ACTIVATIONS, blank=True)
    net: str = setting("mlp", "mlp | conv (images (H, W) or (C, H, W): 28×28, 32×32, 64×64, ...)", choices=NETS)
    prior: str = setting("normal", "any name in pyrovae.PRIORS", choices=PRIORS)
    likelihood: str = setting("bernoulli", "any name in pyrovae.LIKELIHOODS", choices=LIKELIHOODS)
    guide: str = setting("diagonal", "any name in pyrovae.GUIDES", choices=GUIDES)
    prior_options: dict = setting({}, "the named prior's constructor options, e.g. components = 500")
    likelihood_options: dict = setting({}, "the likelihood's options, e.g. min_scale = 0.02")
    guide_options: dict = setting({}, "the guide's options, e.g. flows = 4")
    family_options: dict = setting({}, "the family's own constructor options, e.g. for 2layer latent_dims = [100, "
                                   "50] and hidden = [[200, 200], [100, 100]]")
    init_output_bias: bool = setting(False, "true: start the decoder's last bias at the training data's mean "
                                     "(VAE.init_output_bias; family vae only)")


@dataclass
class TrainKeys(Settings):
    """The [train] keys the app reads itself (the trainer's: :mod:`pyrovae.inference.settings`)."""

    seed: int = setting(0, "seeds Pyro/torch before the model is built (and the data's draws)", low=0)
    classifier_weight: float = setting(0.0, "family \"m2\": α, the weight of the labeled minibatch's mean "
                                       "log q(y|x) (0 = no classifier term)", low=0)
    log: list = setting(["csv"], "what the run writes as it trains: csv | tensorboard | mlflow (training.md#watching-a-run)",
                        choices=LOGGERS)


#: each section's settings classes: their fields are its keys, in this order (docs/configs.md's table)
SECTIONS = {"data": (DataKeys, DataOptions, StreamOptions), "model": (ModelKeys,),
            "train": (RunSettings, OptimizerSettings, StepSettings, TrainKeys)}
#: {section: {key: Rule}}
RULES: Dict[str, Dict[str, Rule]] = {name: {k: r for cls in classes for k, r in rules(cls).items()}
                                     for name, classes in SECTIONS.items()}
#: {section: {key: default}}
DEFAULTS: Dict[str, Dict[str, Any]] = {name: {k: v for cls in classes for k, v in defaults(cls).items()}
                                       for name, classes in SECTIONS.items()}

#: the top-level key listing the user's own component modules
IMPORT_KEY = "import"
_PLUGINS_LOADED = False


def _check_value(section: str, key: str, value):
    """The value of ``section.key`` if its rule allows it; else ConfigError naming the key, what is allowed and what came."""
    try:
        return RULES[section][key].check(f"{section}.{key}", value, objects=False)
    except InputError as e:
        raise ConfigError(str(e)) from None


def settings(section: dict, cls):
    """The settings object ``cls`` (e.g. :class:`~pyrovae.inference.optim.OptimizerSettings`) of a
    validated config section's keys."""
    return cls(**{k: section[k] for k in rules(cls)})


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
            full[section][key] = _check_value(section, key, value)
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
    """model.init_output_bias needs a family that can start its output bias (``starts_output_bias``: the VAE)."""
    if m["init_output_bias"] and not FAMILIES.get(m["family"]).starts_output_bias:
        raise ConfigError(f"model.init_output_bias = true is supported for model.family = 'vae' only, "
                          f"got {m['family']!r}")


def _check_optimizer(t: dict) -> None:
    """Build the optimizer settings once, so a schedule's unknown or bad option fails on load."""
    try:
        settings(t, OptimizerSettings)
    except InputError as e:
        raise ConfigError(f"train.{e}") from None


def parse_override(text: str):
    """``section.key=value`` → (section, key, value). The value is read as TOML, but as the text
    itself where the key takes a string (``--set data.key=1`` is the name "1") or where it is no
    TOML (``--set train.device=cuda:0``). ``section.table.key=value`` sets one option of a table
    (key ``table.key``)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set expects section.key=value (e.g. train.epochs=5), got {text!r}")
    path, raw = text.split("=", 1)
    section, key = path.strip().split(".", 1)
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return section, key, raw
    rule = RULES.get(section, {}).get(key)
    takes_text = rule is not None and rule.kind is str and not rule.switch
    return section, key, raw if takes_text and not isinstance(value, str) else value


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


def _inline(value) -> str:
    """A default as it is written in TOML, on one line."""
    if isinstance(value, (list, dict)):
        return "[" + ", ".join(map(_inline, value)) + "]" if isinstance(value, list) else "{}"
    return tomli_w.dumps({"v": value})[4:].strip()


def key_table() -> str:
    """docs/configs.md's table of every key (Markdown): default, what is allowed, what it does."""
    rows = ["| key | default | allowed | what |", "|---|---|---|---|"]
    for section, keys in RULES.items():
        for key, rule in keys.items():
            cells = [f"`{section}.{key}`", f"`{_inline(DEFAULTS[section][key])}`", rule.allowed(listed=False), rule.help]
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


# -- writing ------------------------------------------------------------------------------------
def dumps(config: dict) -> str:
    """The config as TOML text (``tomli_w``; read back by :func:`load` to the same dict)."""
    return tomli_w.dumps(config)


if __name__ == "__main__":
    print(key_table(), end="")
