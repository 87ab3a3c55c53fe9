"""One registry per kind of component: a name maps to a small class.

A component is given either by name (``"mixture"``, from a config file) with a dict of
options, or by object (an instance built in a script), which is used as it is::

    PRIORS.build("mixture", {"components": 10}, latent_dim=50, input_shape=(28, 28))
    PRIORS.build(MyPrior(...))          # any instance of the registry's base class

A new component is one class and one ``@PRIORS.register("name")`` line.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Mapping, Optional, Type


class Registry:
    """Maps names to component classes of one kind (``kind`` is used in error messages)."""

    def __init__(self, kind: str, base: type):
        self.kind = kind
        self.base = base
        self._classes: Dict[str, Type] = {}

    def register(self, name: str) -> Callable[[Type], Type]:
        def decorator(cls: Type) -> Type:
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._classes[name] = cls
            cls.registry_name = name
            return cls

        return decorator

    def names(self):
        return sorted(self._classes)

    def __contains__(self, name: str) -> bool:
        return name in self._classes

    def get(self, name: str) -> Type:
        if not isinstance(name, str) or name not in self._classes:
            raise ValueError(
                f"unknown {self.kind} {name!r}; expected one of {', '.join(self.names())}"
            )
        return self._classes[name]

    def build(self, spec: Any, options: Optional[Mapping[str, Any]] = None, **context):
        """Return a component from a name (plus ``options``) or pass an instance through.

        ``context`` (e.g. ``latent_dim``, ``input_shape``) is given to the class only where
        its constructor names it; ``options`` must all be constructor arguments.
        """
        if isinstance(spec, self.base):
            if options:
                raise ValueError(f"{self.kind} options {sorted(options)} given with a {self.kind} object")
            return spec
        if not isinstance(spec, str):
            raise TypeError(
                f"{self.kind} must be a name ({', '.join(self.names())}) or a "
                f"{self.base.__name__} instance, got {type(spec).__name__}"
            )
        cls = self.get(spec)
        params = inspect.signature(cls.__init__).parameters
        options = dict(options or {})
        allowed = [p for p in params if p != "self" and p not in context]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for {self.kind} {spec!r}; "
                f"valid options: {', '.join(allowed) or 'none'}"
            )
        kwargs = {k: v for k, v in context.items() if k in params}
        return cls(**kwargs, **options)
