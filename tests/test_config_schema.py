"""One schema for every setting: the config's defaults, validation, ``--set`` parsing and the key
table of docs/configs.md all come from the settings objects the library uses (pyrovae.schema)."""
import dataclasses
import re
from pathlib import Path

import pytest
import torch

from pyrovae import checks
from pyrovae.app import config as cfgmod
from pyrovae.app.cli import main
from pyrovae.app.run import should_compile
from pyrovae.data.sets import DataOptions, StreamOptions
from pyrovae.data.streaming import keep_in_memory
from pyrovae.errors import ConfigError, InputError
from pyrovae.inference.optim import OptimizerSettings
from pyrovae.inference.settings import RunSettings, StepSettings
from pyrovae.inference.tracedstep import traced_mode
from pyrovae.schema import rules

ROOT = Path(__file__).resolve().parents[1]
KEYS = [(section, key) for section, keys in cfgmod.RULES.items() for key in keys]


def test_the_docs_key_table_is_the_schemas():
    text = (ROOT / "docs" / "configs.md").read_text()
    found = re.search(r"<!-- key table:[^\n]*-->\n(.*?)<!-- end of key table -->", text, re.S)
    assert found, "docs/configs.md has no generated key table"
    assert found.group(1) == cfgmod.key_table(), "regenerate it: python -m pyrovae.app.config"


def test_every_key_is_in_the_table_once():
    rows = [line.split(" | ")[0].strip("| `") for line in cfgmod.key_table().splitlines()[2:]]
    assert rows == [f"{s}.{k}" for s, k in KEYS]


def test_defaults_are_the_settings_objects():
    """The config's defaults build the library's default settings objects, field for field."""
    cfg = cfgmod.load()
    for cls in (RunSettings, OptimizerSettings, StepSettings, DataOptions, StreamOptions):
        section = "data" if cls in (DataOptions, StreamOptions) else "train"
        assert cfgmod.settings(cfg[section], cls) == cls()
    assert set(cfg["train"]) >= set(rules(OptimizerSettings)) | set(rules(StepSettings))
    assert "validate" not in cfg["train"]  # an API-only setting


def _bad_values(rule):
    """(value, what the message must say) pairs outside what ``rule`` allows."""
    wrong = "x" if rule.kind is list else []
    words = "one of 'auto', 'on', 'off'" if rule.switch else rule.allowed() if rule.words else rule.kind_words()
    out = [(wrong, words)]
    if rule.low is not None:
        edge = rule.low if rule.low_open else rule.low - 1
        out.append((rule.kind(edge), rule.range()))
    if rule.high is not None:
        edge = rule.high if rule.high_open else rule.high + 1
        out.append((rule.kind(edge), rule.range()))
    return out


@pytest.mark.parametrize("section, key", KEYS)
def test_a_bad_value_names_the_full_key_what_is_allowed_and_what_came(section, key):
    for value, allowed in _bad_values(cfgmod.RULES[section][key]):
        with pytest.raises(ConfigError) as e:
            cfgmod.validate({section: {key: value}})
        assert str(e.value).startswith(f"{section}.{key} must ") and allowed in str(e.value)
        assert str(e.value).endswith(repr(value)) or f"got {value!r}" in str(e.value)


@pytest.mark.parametrize("section, key", [(s, k) for s, k in KEYS
                                          if cfgmod.RULES[s][k].low is not None and not cfgmod.RULES[s][k].low_open])
def test_a_numbers_closed_bound_is_allowed(section, key):
    rule = cfgmod.RULES[section][key]
    assert cfgmod.validate({section: {key: rule.kind(rule.low)}})[section][key] == rule.low


def test_an_option_of_another_schedule_names_the_full_key():
    with pytest.raises(ConfigError) as e:
        cfgmod.load(overrides=["train.lr_schedule_options.total_epochs=300"])
    assert str(e.value) == ("train.lr_schedule_options.total_epochs is not an option of lr_schedule 'constant', which "
                            "takes none (total_epochs is an option of 'burda', 'cosine': set lr_schedule too); "
                            "got total_epochs = 300")
    cfg = cfgmod.load(overrides=["train.lr_schedule=cosine", "train.lr_schedule_options.total_epochs=300"])
    assert cfgmod.settings(cfg["train"], OptimizerSettings).schedule.total_epochs == 300
    with pytest.raises(ConfigError, match=r"^train.lr_schedule_options.total_epochs must be a positive integer, "
                                          r"got 0$"):
        cfgmod.load(overrides=["train.lr_schedule=cosine", "train.lr_schedule_options.total_epochs=0"])


@pytest.mark.parametrize("beta", [-0.01, 0.0, 0.5, 0.999, 1.0])
@pytest.mark.parametrize("which", [0, 1])
def test_adams_betas_allow_what_torch_allows(beta, which):
    """Both betas in [0, 1), as torch.optim.Adam checks them (β2 = 0 included, as the docs say)."""
    betas = [0.9, 0.999]
    betas[which] = beta
    try:
        torch.optim.Adam([torch.zeros(1, requires_grad=True)], betas=tuple(betas))
        torch_allows = True
    except ValueError:
        torch_allows = False
    key = f"adam_beta{which + 1}"
    try:
        cfg = cfgmod.load(overrides=[f"train.{key}={beta}"])
        ours = True
    except ConfigError as e:
        assert str(e) == f"train.{key} must be in [0, 1), got {beta!r}"
        ours = False
    assert ours == torch_allows
    if ours:  # and the optimizer is built with it
        adam = cfgmod.settings(cfg["train"], OptimizerSettings).adam([torch.zeros(1, requires_grad=True)])
        assert adam.param_groups[0]["betas"][which] == beta


def test_set_values_are_read_as_the_key_takes_them():
    parse = cfgmod.parse_override
    assert parse("data.key=1") == ("data", "key", "1")  # a string key: the text as written
    assert parse("data.key='y'") == ("data", "key", "y")
    assert parse("train.device=cuda:0") == ("train", "device", "cuda:0")
    assert parse("model.hidden=[256, 128]") == ("model", "hidden", [256, 128])
    assert parse("train.traced_step=false") == ("train", "traced_step", False)
    assert parse("data.in_memory=off") == ("data", "in_memory", "off")
    assert parse("train.lr=3e-4") == ("train", "lr", 3e-4)
    assert cfgmod.load(overrides=["train.lr=1"])["train"]["lr"] == 1.0  # numbers where a number is asked


def _unavailable_devices():
    names = ["garbage", "cuda:99", "cpu:1"]
    names += [] if torch.cuda.is_available() else ["cuda", "cuda:0"]
    names += [] if torch.backends.mps.is_available() else ["mps"]
    return names


@pytest.mark.parametrize("device", _unavailable_devices())
def test_a_device_this_machine_lacks_is_refused_on_load_saying_what_it_has(device):
    available = ", ".join(map(repr, checks.available_devices()))
    with pytest.raises(ConfigError, match=r"^train.device must be 'auto' or a device of this machine "
                                          f"\\({re.escape(available)}\\), got {re.escape(repr(device))}"):
        cfgmod.load(overrides=[f"train.device={device}"])
    with pytest.raises(InputError, match=f"^device must be 'auto' or a device of this machine"):
        RunSettings(device=device)


def test_the_cli_refuses_a_missing_gpu_in_one_line(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--set", "train.device=cuda:99"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyrovae: error: train.device must be 'auto' or a device of this machine") and \
        err.count("\n") == 1
    assert not (tmp_path / "r").exists()  # refused before anything is written


@pytest.mark.parametrize("device", ["auto", "cpu"] + checks.available_devices())
def test_the_devices_this_machine_has_are_allowed(device):
    assert cfgmod.load(overrides=[f"train.device={device}"])["train"]["device"] == device
    assert checks.device("device", device).type in ("cpu", "cuda", "mps")


SWITCH_VALUES = [("auto", "auto"), ("on", "on"), ("off", "off"), (True, "on"), (False, "off"),
                 ("yes", None), (1, None), (None, None), ("true", None)]


@pytest.mark.parametrize("value, mode", SWITCH_VALUES)
def test_every_auto_on_off_setting_reads_the_same_values(value, mode):
    """traced_step, in_memory, evaluate's compile_networks and the config's keys: one parser."""
    readers = {"train.traced_step": lambda v: traced_mode(v),
               "data.in_memory": lambda v: {True: "on", False: "off"}.get(keep_in_memory(v, 0, "cpu"))
               if v != "auto" else "auto",
               "compile_networks": lambda v: {True: "on", False: "off"}[should_compile(v, 0, torch.device("cuda"))]
               if v != "auto" else "auto"}
    for name, read in readers.items():
        if mode is None:
            with pytest.raises(InputError, match=r"must be one of 'auto', 'on', 'off'; got"):
                read(value)
        else:
            assert read(value) == mode, name
    for section, key in [("train", "traced_step"), ("data", "in_memory")]:
        if mode is None:
            with pytest.raises(ConfigError, match=f"^{section}.{key} must be one of 'auto', 'on', 'off'; got"):
                cfgmod.validate({section: {key: value}})
        else:
            cfgmod.validate({section: {key: value}})


def test_settings_objects_check_their_fields_when_built():
    with pytest.raises(InputError, match=r"^precision must be one of 'float32', 'bf16'; got 'fp16'$"):
        StepSettings(precision="fp16")
    with pytest.raises(InputError, match=r"^batch_size must be > 0, got 0$"):
        RunSettings(batch_size=0)
    with pytest.raises(InputError, match=r"^clip_norm must be a number, got None$"):
        OptimizerSettings(clip_norm=None)
    assert OptimizerSettings(clip_norm=0).clip_norm == 0.0 and OptimizerSettings().spec()["clip_norm"] is None
    assert dataclasses.replace(StepSettings(), traced_step=True).traced_step is True


def test_trains_flat_keywords_default_to_their_declarations():
    from inspect import signature

    from pyrovae.inference.train import train

    params = signature(train).parameters
    declared = RunSettings()
    for name in rules(RunSettings):
        if name != "epochs":  # required by train(); 10 is the config's default
            assert params[name].default == getattr(declared, name), name


def test_train_takes_its_settings_objects_and_refuses_a_missing_device():
    import pyro

    from pyrovae.inference.train import train
    from test_train import linear_gaussian_pair

    x = torch.randn(40, 3)
    pyro.clear_param_store()
    model, guide = linear_gaussian_pair(3, 1)
    history = train(model, guide, x, epochs=3, batch_size=20, lr=0.1, progress=False, seed=0,
                    optimizer=OptimizerSettings(lr_schedule="step", lr_schedule_options={"step_size": 1, "gamma": 0.5}),
                    step=StepSettings(fast_step=False, validate=True))
    assert [row["lr"] for row in history] == pytest.approx([0.1, 0.05, 0.025])  # lr over the optimizer's 1e-3
    for device in _unavailable_devices():
        with pytest.raises(InputError, match=r"^device must be 'auto' or a device of this machine \("):
            train(model, guide, x, epochs=1, device=device, progress=False)


def test_load_dataset_checks_its_stream_options_by_their_declaration():
    from pyrovae.data import load_dataset

    with pytest.raises(InputError, match=r"^workers must be >= 0, got -1$"):
        load_dataset("toy", "train", workers=-1)
    with pytest.raises(ConfigError, match=r"^data.workers must be >= 0, got -1$"):
        cfgmod.load(overrides=["data.workers=-1"])
