"""The package's layout: each layer imports only the layers below it (read from the source with ``ast``).

Layers, lowest first: the foundation (registry, checks, errors, files, schema); components and data (side
by side); the model; inference; the lab; the app. Nothing imports upward, modules form no cycle,
and no module imports another module's ``_private`` names.
"""
import ast
import pathlib

import pytest

import pyrovae

ROOT = pathlib.Path(pyrovae.__file__).parent
LAYERS = {"registry": 0, "checks": 0, "errors": 0, "files": 0, "schema": 0, "components": 1, "data": 1, "model": 2,
          "inference": 3, "lab": 4, "app": 5}
TOP_LEVEL = {"__init__", "__main__"}  # the package's front: may import any layer


def modules():
    """{dotted name: path} of every module of the package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(("pyrovae",) + parts)] = path
    return out


def is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def package_of(name: str) -> str:
    return name if is_package(name) else name.rpartition(".")[0]


def imports(name: str, path: pathlib.Path):
    """(imported module, imported names) of every ``import``/``from ... import`` inside pyrovae."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_of(name).split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "pyrovae":
                names = [a.name for a in node.names]
                submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules()]
                found += [(m, []) for m in submodules]
                found.append((target, [n for n in names if f"{target}.{n}" not in modules()]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.split(".")[0] == "pyrovae"]
    return found


def layer(name: str):
    """The layer of a pyrovae module; None for the package's front (``pyrovae``, ``__main__``)."""
    parts = name.split(".")
    return None if len(parts) < 2 or parts[1] in TOP_LEVEL else LAYERS[parts[1]]


def edges():
    return {(name, target, tuple(names)) for name, path in modules().items() for target, names in imports(name, path)}


def test_every_module_belongs_to_a_layer():
    unknown = sorted(n for n in modules() if n != "pyrovae" and n.split(".")[1] not in set(LAYERS) | TOP_LEVEL)
    assert not unknown, f"modules outside the layers {sorted(LAYERS)}: {unknown}"


def test_imports_only_go_down():
    upward = sorted(f"{a} imports {b} (layer {layer(a)} → {layer(b)})" for a, b, _ in edges()
                    if layer(a) is not None and layer(b) is not None and layer(b) > layer(a))
    assert not upward, "\n".join(upward)


def test_no_module_imports_another_modules_private_names():
    private = sorted(f"{a} imports {n} from {b}" for a, b, names in edges() for n in names
                     if n.startswith("_") and b != a)
    assert not private, "\n".join(private)


def test_no_import_cycles():
    graph = {}
    for a, b, _ in edges():
        # importing pyrovae.x.y runs pyrovae.x/__init__ first: a module's own package is not an edge
        if b in modules() and a != b and not (is_package(b) and a.startswith(b + ".")):
            graph.setdefault(a, set()).add(b)
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" → ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("source, target, expected", [
    ("pyrovae.lab.compare", "pyrovae.app.plots", False), ("pyrovae.app.run", "pyrovae.lab.report", True),
    ("pyrovae.model", "pyrovae.inference.train", False), ("pyrovae.data.sets", "pyrovae.registry", True),
])
def test_the_rule_itself(source, target, expected):
    """The check above can fail: an upward import is seen as one."""
    assert (layer(target) <= layer(source)) is expected
