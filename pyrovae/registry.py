"""One name → factory mechanism for every kind of thing a config names.

Priors, likelihoods, variational families, networks, ELBOs and data sets each have one
:class:`Registry`. A factory is a class or a function; it is registered under a name with one
decorator line and is then usable by that name in a TOML config::

    @PRIORS.register("student-t")
    class StudentT(Prior):
        ...

    PRIORS.build("mixture", {"components": 10}, latent_dim=50, input_shape=(28, 28))
    PRIORS.build(MyPrior(...))          # an instance of the registry's base class passes through

``build`` gives the factory the *context* (``latent_dim``, ``input_shape``, ...) only where its
signature names it, and the user's *options* (a config's ``[model.prior_options]``), all of which
must be parameters of the factory. A user's own components live in their own module, which a
config loads with a top-level ``import = ["my_module"]`` or a package declares as an entry point
in the group ``pyrovae.components`` (:func:`load_plugins`).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

from .errors import ConfigError, InputTypeError

ENTRY_POINT_GROUP = "pyrovae.components"


class Registry:
    """Maps names to factories of one kind (``kind`` names it in error messages).

    ``base``: instances of this type are components already built and pass through
    :meth:`build` unchanged (None: every spec is a name).
    """

    def __init__(self, kind: str, base: Optional[type] = None):
        self.kind = kind
        self.base = base
        self._factories: Dict[str, Callable] = {}

    def register(self, name: str, factory: Optional[Callable] = None):
        """``@REG.register("name")`` above a class or function, or ``REG.register("name", factory)``."""
        if not isinstance(name, str) or not name:
            raise InputTypeError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def add(obj: Callable) -> Callable:
            if name in self._factories:
                raise ConfigError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = obj
            if isinstance(obj, type):
                obj.registry_name = name
            return obj

        return add if factory is None else add(factory)

    def unregister(self, name: str) -> Callable:
        """Remove ``name`` (e.g. to register a new version in a notebook); return its factory."""
        return self._factories.pop(self.get(name) and name)

    def names(self) -> List[str]:
        """The registered names, sorted (as error messages list them)."""
        return sorted(self._factories)

    def __contains__(self, name) -> bool:
        return name in self._factories

    def __iter__(self):
        """The registered names in the order they were registered."""
        return iter(list(self._factories))

    def get(self, name: str) -> Callable:
        if not isinstance(name, str) or name not in self._factories:
            raise ConfigError(f"unknown {self.kind} {name!r}; expected one of {', '.join(self.names())}")
        return self._factories[name]

    def options(self, name: str, context: Iterable[str] = ()) -> List[str]:
        """The options the component ``name`` takes: its factory's named parameters, but those in ``context``."""
        params = inspect.signature(self.get(name)).parameters
        return [p for p in params if p not in context and params[p].kind not in (params[p].VAR_POSITIONAL,
                                                                                 params[p].VAR_KEYWORD)]

    def build(self, spec: Any, options: Optional[Mapping[str, Any]] = None, **context):
        """A component from a name (plus ``options``), or ``spec`` itself if it is already one."""
        if self.base is not None and isinstance(spec, self.base):
            if options:
                raise ConfigError(f"{self.kind} options {sorted(options)} given with a {self.kind} object")
            return spec
        if not isinstance(spec, str):
            what = f" or a {self.base.__name__} instance" if self.base is not None else ""
            raise InputTypeError(f"{self.kind} must be a name ({', '.join(self.names())}){what}, "
                            f"got {type(spec).__name__}")
        factory = self.get(spec)
        params = inspect.signature(factory).parameters
        options = dict(options or {})
        allowed = self.options(spec, context)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown} for {self.kind} {spec!r}; "
                             f"valid options: {', '.join(allowed) or 'none'}")
        kwargs = {k: v for k, v in context.items() if k in params}
        return factory(**kwargs, **options)


def import_components(names: Iterable[str], base_dir: Optional[Path] = None) -> None:
    """Import the user modules a config lists: dotted module names or paths to ``.py`` files
    (relative to ``base_dir``, the config's folder). Their ``register`` lines then run. A module
    name that Python's path lacks is looked for beside the config, then in the working directory."""
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"import must list module names or .py paths, got {name!r}")
        try:
            if name.endswith(".py"):
                _import_file(Path(base_dir or ".") / name)
            else:
                _find_module_folder(name, base_dir)
                importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"import {name!r} failed: {e}") from None


def _find_module_folder(name: str, base_dir: Optional[Path]) -> None:
    """Put on ``sys.path`` the folder (``base_dir``, else the working directory) holding the top
    package of ``name`` (``top.py`` or ``top/__init__.py``) when Python's path does not find it;
    a ConfigError saying what to do when neither holds it."""
    top = name.split(".")[0]
    if importlib.util.find_spec(top) is not None:
        return
    folders = list(dict.fromkeys(p.resolve() for p in (Path(base_dir or "."), Path("."))))
    for folder in folders:
        if (folder / f"{top}.py").is_file() or (folder / top / "__init__.py").is_file():
            sys.path.append(str(folder))
            return
    raise ConfigError(f"import {name!r} failed: no module {top!r} on Python's path, nor {top}.py beside the config or in "
                      f"the working directory ({', '.join(map(str, folders))}); list the file's path instead "
                      f"(import = [\"path/to/{top}.py\"]) or add its folder to PYTHONPATH")


def _import_file(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"import {str(path)!r}: no such file")
    module_name = f"pyrovae_user_{path.stem}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)


def load_plugins() -> List[str]:
    """Import every module declared in the entry point group ``pyrovae.components``; their names."""
    loaded = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry.load()
        loaded.append(entry.name)
    return loaded
