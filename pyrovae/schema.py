"""Settings declared once: each a dataclass field with its default, the values it allows and one line of help.

A settings class (:class:`pyrovae.inference.optim.OptimizerSettings`,
:mod:`pyrovae.inference.settings`, :class:`pyrovae.data.sets.DataOptions`, the app's own keys in
:mod:`pyrovae.app.config`) derives from :class:`Settings` and declares each field with
:func:`setting`; building one checks every field. The run config takes its defaults, its
validation, its ``--set`` parsing and the key table of docs/configs.md from the same fields::

    @dataclass
    class StepSettings(Settings):
        precision: str = setting("float32", "what the networks run in", choices=PRECISIONS)

A value of the wrong type or outside what is allowed is an :class:`~pyrovae.errors.InputError`
naming the setting, what it allows and what came.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Dict, Optional, Sequence, Union

from .errors import InputError
from .registry import Registry

#: the values of an ``auto``/``on``/``off`` setting (true and false stand for on and off)
SWITCH = ("auto", "on", "off")


def switch(name: str, value) -> str:
    """An ``auto``/``on``/``off`` setting as one of :data:`SWITCH` (True → "on", False → "off")."""
    mode = {True: "on", False: "off"}[value] if isinstance(value, bool) else value
    if not isinstance(mode, str) or mode not in SWITCH:
        raise InputError(f"{name} must be one of {_quoted(SWITCH)}; got {value!r} (true and false stand for 'on' and "
                         f"'off')")
    return mode


def one_of(name: str, value, names: Sequence) -> None:
    """InputError naming ``name``, the ``names`` allowed and what came, unless ``value`` is one of them."""
    if value not in names:
        raise InputError(f"{name} must be one of {_quoted(names)}; got {value!r}")


def _quoted(names: Sequence) -> str:
    return ", ".join(repr(n) for n in names)


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


_KINDS = {bool: ("a boolean", lambda v: isinstance(v, bool)), int: ("an integer", _whole),
          float: ("a number", lambda v: _real(v) and math.isfinite(v)), str: ("a string", lambda v: isinstance(v, str)),
          dict: ("a table", lambda v: isinstance(v, dict))}


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one setting allows, and its help line (kept in the field's metadata by :func:`setting`).

    ``kind``: the type of its values (``bool``, ``int``, ``float``, ``str``, ``list`` or ``dict``);
    a list holds ``items`` (``str``: names; ``int``: positive integers). ``low``/``high`` bound a
    number (``open`` ends excluded: ``"low"``, ``"high"`` or ``"both"``). ``choices``: the names
    allowed, a :class:`~pyrovae.registry.Registry` (which grows as components are imported) or a
    tuple, and "" too with ``blank``. ``switch``: ``auto``/``on``/``off`` (:func:`switch`).
    ``test`` and ``words``: a check of its own and what it allows, in words; ``validator(name,
    value)``: a check that raises its own InputError (what this machine has). ``instance``: the API
    also takes an object of that class (an ELBO, a schedule). ``config``: a key of the run config.
    """

    help: str
    kind: type = str
    items: Optional[type] = None
    low: Optional[float] = None
    high: Optional[float] = None
    open: str = ""
    choices: Union[Sequence, Registry, None] = None
    blank: bool = False
    switch: bool = False
    test: Optional[Callable[[Any], bool]] = None
    validator: Optional[Callable[[str, Any], Any]] = None
    words: Optional[str] = None
    instance: Optional[type] = None
    config: bool = True

    def names(self) -> list:
        names = self.choices.names() if isinstance(self.choices, Registry) else list(self.choices)
        return [""] + names if self.blank else names

    @property
    def low_open(self) -> bool:
        return self.open in ("low", "both")

    @property
    def high_open(self) -> bool:
        return self.open in ("high", "both")

    def range(self) -> str:
        """The allowed interval: ``> 0``, ``>= 0``, ``in [0, 1)``; "" when unbounded."""
        if self.high is None:
            return "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def kind_words(self) -> str:
        if self.kind is list:
            return "a list of names" if self.items is str else "a list of positive integers"
        return _KINDS[self.kind][0]

    def allowed(self, listed: bool = True) -> str:
        """What the setting allows, in words (the key table's column, the messages' middle);
        ``listed=False``: a registry's names as "a registered <kind> name" (they grow with imports)."""
        if self.words is not None:
            return self.words
        if self.switch:
            return f"one of {_quoted(SWITCH)} (true, false: 'on', 'off')"
        if self.choices is not None:
            among = _quoted(self.names())
            if isinstance(self.choices, Registry) and not listed:
                among = f"the registered {self.choices.kind} names" + (' or ""' if self.blank else "")
            return f"a list of names among {among}" if self.kind is list else f"one of {among}"
        return " ".join(filter(None, [self.kind_words(), self.range()]))

    def check(self, name: str, value, objects: bool = True):
        """``value`` if it is allowed (ints made floats where numbers are asked); else InputError
        naming ``name``, what is allowed and what came. ``objects``: an ``instance`` object is allowed."""
        if objects and self.instance is not None and isinstance(value, self.instance):
            return value
        if self.switch:
            switch(name, value)
            return value
        if not self._type_ok(value):
            raise InputError(f"{name} must be {self.kind_words() if self.words is None else self.allowed()}, "
                             f"got {value!r}")
        if self.validator is not None:
            self.validator(name, value)
        elif self.choices is not None:
            self._check_names(name, value)
        elif not self._in_range(value) or (self.test is not None and not self.test(value)):
            raise InputError(f"{name} must be {self.range() if self.words is None else self.allowed()}, got {value!r}")
        return float(value) if self.kind is float else value

    def _type_ok(self, value) -> bool:
        if self.kind is list:
            test = (lambda v: isinstance(v, str)) if self.items is str else (lambda v: _whole(v) and v > 0)
            return isinstance(value, list) and all(test(v) for v in value)
        return _KINDS[self.kind][1](value)

    def _in_range(self, value) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def _check_names(self, name: str, value) -> None:
        names = self.names()
        if not isinstance(value, list):
            return one_of(name, value, names)
        for v in value:
            if v not in names:
                raise InputError(f"{name} must list names among {_quoted(names)}; got {v!r} in {value!r}")
        if len(set(value)) < len(value):
            raise InputError(f"{name} names one twice: {value!r}")


def setting(default, help: str, **rule) -> Any:
    """A dataclass field: ``default`` (a list or table default is copied per instance), with its
    :class:`Rule` (``kind`` follows the default unless given) in the field's metadata."""
    rule.setdefault("kind", type(default) if not rule.get("switch") else str)
    if rule["kind"] is list:
        rule.setdefault("items", str if default and isinstance(default[0], str) else int)
    meta = {"rule": Rule(help=help, **rule)}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Settings:
    """A dataclass of :func:`setting` fields, each checked (and numbers made floats) when it is built."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if "rule" in f.metadata:
                setattr(self, f.name, f.metadata["rule"].check(f.name, getattr(self, f.name)))


def rules(cls) -> Dict[str, Rule]:
    """{name: Rule} of a settings class's config keys, in declaration order."""
    return {f.name: f.metadata["rule"] for f in dataclasses.fields(cls)
            if "rule" in f.metadata and f.metadata["rule"].config}


def defaults(cls) -> Dict[str, Any]:
    """{name: default} of a settings class's config keys (fresh lists and tables)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in rules(cls):
            out[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return out
