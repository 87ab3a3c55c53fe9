"""The docs run as written: every fenced block of README.md and docs/*.md, every relative link and
#anchor, every example config.

How a page's blocks are treated (the conventions are in CONTRIBUTING.md, "Docs"):

- ``python`` blocks run in order in one namespace per page, which starts as after
  ``import torch, pyro, pyrovae`` and ``import pyro.distributions as dist``; ``pyrovae.train``
  trains one epoch whatever ``epochs`` says. A block whose first line is ``# NAME.py`` is written
  to that file instead, in the folder of every page (a module the pages import or a config lists).
- ``sh`` blocks: each command (``\\`` continues a line, ``#`` starts a comment) that starts with
  ``pyrovae``, ``python examples/`` or ``torchrun`` runs, shrunk mechanically by the flags in
  :data:`SHRINK` appended after the documented ones (the later flag wins); other commands
  (``make``, ``.venv/bin/python -m pytest``) are shown, not run.
- ``toml`` blocks with a ``[data]``, ``[model]`` or ``[train]`` table, or an ``import`` list, are
  loaded as a config (keys, types and names validated).
- A block right after ``<!-- fragment -->`` is skipped (a synopsis, a part of a larger file); an
  untagged block right after ``<!-- output -->`` is what the page's previous block prints: each of
  its lines must appear in that output, numbers matching any number.
- Everything runs in a fresh folder holding ``examples/`` (a link to the repository's) and the small
  files the pages name: ``my_pngs/`` (two class sub-folders of 125 PNGs), ``my_data.npz`` (``x``,
  ``y``: 250 examples), each large enough for the SHRINK sizes after its 10 % test split.
"""
import contextlib
import functools
import io
import os
import re
import shlex
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA_DIR, frey_available, mnist_available, needs_mnist

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
LINKED = PAGES + ["CONTRIBUTING.md", "BENCHMARKS.md"]
CONFIGS = sorted(p.name for p in (ROOT / "examples" / "configs").glob("*.toml"))

#: appended to a documented command of that kind: one short epoch on a few hundred images
SHRINK = {
    "train": ["--set", "train.epochs=1", "--set", "data.subset=200", "--set", "data.test_subset=20"],
    "evaluate": ["--test-size", "20", "--iw-samples", "10"],
    "compare": ["--test-size", "20", "--max-k", "10", "--gradient-draws", "2"],
    "exact": ["--epochs", "2", "--iw-samples", "10"],
    "examples/hand_written_pair.py": ["--epochs", "1", "--subset", "500", "--iw-samples", "10"],
    "examples/swap_components.py": ["--epochs", "1", "--subset", "300"],
    "examples/semi_supervised.py": ["--epochs", "1", "--subset", "500"],
    "examples/frey_face.py": ["--epochs", "1"],
    "examples/own_family.py": ["--epochs", "1", "--subset", "300"],
}
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
MARKER = re.compile(r"<!--\s*(fragment|output)\s*-->\s*$")
NUMBER_PATTERN = r"[-−+]?\d+(?:[.,]\d+)*(?:e[-+]?\d+)?"
NUMBER = re.compile(NUMBER_PATTERN)


# -- reading a page ----------------------------------------------------------------------------------
def blocks(page: str) -> list:
    """The fenced blocks of ``page``: (language, text, marker or '', line number)."""
    text = (ROOT / page).read_text()
    found = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.search(before)
        found.append((m.group(1), m.group(2), marker.group(1) if marker else "", text[:m.start()].count("\n") + 1))
    return found


def commands(block: str) -> list:
    """The commands of a shell block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def runnable(words: list) -> bool:
    return words[0] in ("pyrovae", "torchrun") or (words[0] == "python" and words[1].startswith("examples/"))


def shrunk(words: list) -> list:
    """The command as run here: pyrovae in this Python, the SHRINK flags appended."""
    if words[0] == "python":
        return [sys.executable, *words[1:], *SHRINK.get(words[1], [])]
    if words[0] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *words[1:], *SHRINK["train"]]
    sub = next((w for w in words[1:] if not w.startswith("-")), "")
    return [sys.executable, "-m", "pyrovae", *words[1:], *SHRINK.get(sub, [])]


def output_matches(expected: str, printed: str) -> list:
    """The lines of ``expected`` that ``printed`` lacks (numbers match any number, spaces any spaces)."""
    def pattern(line):
        words = [NUMBER_PATTERN.join(re.escape(part) for part in NUMBER.split(word)) for word in line.split()]
        return r"\s+".join(words)
    return [line for line in expected.strip("\n").splitlines()
            if line.strip() and not re.search(pattern(line), printed)]


# -- the folder the pages run in ---------------------------------------------------------------------
def workspace(tmp_path: Path) -> Path:
    """A folder with examples/ and the small data files the pages name."""
    from PIL import Image
    rng = np.random.default_rng(0)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    for label in ("cat", "dog"):
        folder = tmp_path / "my_pngs" / label
        folder.mkdir(parents=True)
        for i in range(125):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L").save(folder / f"{i}.png")
    np.savez(tmp_path / "my_data.npz", x=rng.random((250, 28, 28), dtype=np.float32),
             y=rng.integers(0, 10, 250))
    return tmp_path


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


@contextlib.contextmanager
def working_directory(cwd: Path):
    """``cwd`` as the working directory and first on ``sys.path``, as for a user working there."""
    here = os.getcwd()
    os.chdir(cwd)
    sys.path.insert(0, str(cwd))
    try:
        yield
    finally:
        sys.path.remove(str(cwd))
        os.chdir(here)


def run_command(words: list, cwd: Path) -> str:
    """Run a documented command (shrunk) in ``cwd``; its stdout. ``pyrovae`` runs in this process
    (``python -m pyrovae``'s ``main``, which is what the script calls), the rest in a child."""
    command = shrunk(words)
    if command[1:3] == ["-m", "pyrovae"]:
        from pyrovae.app.cli import main
        out, err = io.StringIO(), io.StringIO()
        with working_directory(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(command[3:])
        printed, errors = out.getvalue(), err.getvalue()
    else:
        done = subprocess.run(command, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=600)
        status, printed, errors = done.returncode, done.stdout, done.stderr
    assert status == 0, f"{shlex.join(words)} (run as {shlex.join(command)}) failed:\n{printed[-2000:]}\n{errors[-3000:]}"
    return printed


def run_python(code: str, namespace: dict, cwd: Path) -> str:
    printed = io.StringIO()
    with working_directory(cwd), contextlib.redirect_stdout(printed):
        exec(compile(code, "<doc block>", "exec"), namespace)
    return printed.getvalue()


def load_toml(text: str, cwd: Path) -> None:
    from pyrovae.app import config
    path = cwd / "doc_config.toml"
    path.write_text(text)
    with working_directory(cwd):
        config.load(path)


def file_blocks() -> dict:
    """{file name: text} of every page's ``# NAME.py`` Python block."""
    return {text.split("\n", 1)[0][2:].strip(): text for page in PAGES for language, text, _, _ in blocks(page)
            if language == "python" and re.match(r"# ([\w/]+\.py)\n", text)}


def one_epoch(train):
    """``pyrovae.train`` for a page's Python blocks: the documented call, one epoch."""
    @functools.wraps(train)
    def train_one_epoch(*args, **kwargs):
        return train(*args, **{**kwargs, "epochs": 1})
    return train_one_epoch


def run_page(page: str, cwd: Path) -> None:
    import pyro
    import pyro.distributions as dist
    import torch
    import pyrovae
    for name, text in file_blocks().items():
        (cwd / name).write_text(text)
    namespace = {"__name__": "__doc__", "torch": torch, "pyro": pyro, "pyrovae": pyrovae, "dist": dist}
    printed = ""
    for language, text, marker, line in blocks(page):
        where = f"{page}:{line}"
        if marker == "fragment":
            continue
        if marker == "output":
            missing = output_matches(text, printed)
            assert not missing, f"{where}: the output shown is not what the block before prints; missing " \
                                f"{missing}\nprinted:\n{printed}"
            continue
        try:
            if language == "python" and re.match(r"# ([\w/]+\.py)\n", text):
                continue
            elif language == "python":
                printed = run_python(text, namespace, cwd)
            elif language in ("sh", "bash", "console"):
                printed = "".join(run_command(words, cwd) for words in commands(text) if runnable(words))
            elif language == "toml" and re.search(r"^\[(data|model|train)\]|^import\s*=", text, re.M):
                load_toml(text, cwd)
        except AssertionError as e:
            raise AssertionError(f"{where}: {e}") from None
        except Exception as e:
            raise AssertionError(f"{where}: the {language or 'untagged'} block fails: {type(e).__name__}: {e}") from e


# -- the tests ---------------------------------------------------------------------------------------
@pytest.mark.slow
@needs_mnist
@pytest.mark.parametrize("page", PAGES)
def test_every_block_of_the_page_runs_as_written(page, tmp_path, monkeypatch):
    import pyrovae
    monkeypatch.setenv("PYROVAE_DATA_DIR", str(DATA_DIR))
    monkeypatch.setattr(pyrovae, "train", one_epoch(pyrovae.train))
    monkeypatch.setattr(sys, "path", list(sys.path))
    with user_modules_forgotten(tmp_path):
        run_page(page, workspace(tmp_path))


@contextlib.contextmanager
def user_modules_forgotten(folder: Path):
    """Afterwards, the modules imported from ``folder`` and the names they registered are gone."""
    import pyrovae
    from pyrovae.components import ACTIVATIONS
    registries = [pyrovae.PRIORS, pyrovae.LIKELIHOODS, pyrovae.GUIDES, pyrovae.NETS, pyrovae.ELBOS,
                  pyrovae.DATASETS, ACTIVATIONS]
    before = [set(r.names()) for r in registries]
    try:
        yield
    finally:
        for registry, names in zip(registries, before):
            for name in set(registry.names()) - names:
                registry.unregister(name)
        for name in [n for n, m in sys.modules.items() if str(getattr(m, "__file__", "")).startswith(str(folder))]:
            del sys.modules[name]


def test_every_runnable_shell_command_has_a_way_to_shrink():
    """A documented command that trains is run small: its kind must be in SHRINK."""
    kinds = set()
    for page in PAGES:
        for language, text, marker, _ in blocks(page):
            if language in ("sh", "bash", "console") and marker != "fragment":
                for words in commands(text):
                    if runnable(words) and words[0] == "python":
                        kinds.add(words[1])
    assert kinds <= set(SHRINK), sorted(kinds - set(SHRINK))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but ``-`` and ``_`` dropped, spaces ``-``."""
    text = re.sub(r"`|\*\*?|__", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set:
    """Every #anchor of a Markdown file: its headings' slugs (repeats numbered -1, -2, …) and <a id/name>."""
    text = FENCE.sub("", path.read_text())
    seen, out = {}, set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    out.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    return out


def links(page: str) -> list:
    """(target, line) of every relative link and image of ``page`` (outside code)."""
    text = (ROOT / page).read_text()
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    text = re.sub(r"`[^`\n]*`", "", text)
    out = []
    for m in re.finditer(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
        target = m.group(1)
        if not re.match(r"[a-z]+:", target):
            out.append((target, text[:m.start()].count("\n") + 1))
    return out


@pytest.mark.parametrize("page", LINKED)
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target, line in links(page):
        path, _, anchor = target.partition("#")
        file = (ROOT / page).parent / path if path else ROOT / page
        if not file.exists():
            broken.append(f"{page}:{line}: {target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{page}:{line}: {target} (no heading with the anchor #{anchor} in {file.name})")
    assert not broken, "\n".join(broken)


def test_the_slugs_follow_githubs_rules():
    assert slug("Speed: the fast and the traced step") == "speed-the-fast-and-the-traced-step"
    assert slug("Why `iwae` with k = 5 (DReG)?") == "why-iwae-with-k--5-dreg"
    assert slug("Your own data: folders and array files") == "your-own-data-folders-and-array-files"
    assert slug("Two layers — q(z1|x) q(z2|x)") == "two-layers--qz1x-qz2x"


def test_the_checks_see_a_drift(tmp_path):
    """The machinery fails on what it must: a missing anchor, an output that differs, a bad key."""
    assert output_matches("  test accuracy 0.6400 ± 0.0482", "  test accuracy   0.5 ± 0.01\n") == []
    assert output_matches("  test accuracy 0.6400 ± 0.0482", "  test error 0.5 ± 0.01\n") != []
    with pytest.raises(Exception, match="train.epoch"):
        load_toml("[train]\nepoch = 3\n", tmp_path)


# -- every example config, one short epoch ----------------------------------------------------------
def write_cifar(data_dir: Path, n: int = 40) -> None:
    """CIFAR-10's python batches with ``n`` random images each."""
    import pickle
    rng = np.random.default_rng(0)
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"labels": [int(v) for v in rng.integers(0, 10, n)],
                         b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}, f, protocol=2)


def documented_metrics_columns() -> list:
    """The columns docs/cli.md gives for ``metrics.csv``."""
    text = " ".join((ROOT / "docs" / "cli.md").read_text().split())
    return re.search(r"`metrics\.csv` — one row per epoch: `([^`]+)`", text).group(1).replace(" ", "").split(",")


def config_marks(name: str) -> list:
    marks = [pytest.mark.slow]
    if name.startswith("mnist"):
        marks += [pytest.mark.mnist, pytest.mark.skipif(not mnist_available(), reason="no MNIST files")]
    if name.startswith("frey"):
        marks.append(pytest.mark.skipif(not frey_available(), reason="no Frey Face file"))
    return marks


@pytest.mark.parametrize("name", [pytest.param(n, marks=config_marks(n)) for n in CONFIGS])
def test_every_example_config_trains_one_short_epoch_and_evaluates(name, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for entry in DATA_DIR.iterdir() if DATA_DIR.is_dir() else []:
        (data_dir / entry.name).symlink_to(entry.resolve())
    if not (data_dir / "cifar-10-batches-py").exists():
        write_cifar(data_dir)
    monkeypatch.setenv("PYROVAE_DATA_DIR", str(data_dir))
    run = tmp_path / "run"
    config = str(ROOT / "examples" / "configs" / name)
    run_command(["pyrovae", "train", "--config", config, "--out", str(run), "--set", "train.batch_size=50"],
                tmp_path)
    assert (run / "checkpoint.pt").is_file()
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    family_scores = ["test_accuracy"] if name == "mnist-m2.toml" else []  # docs/cli.md: "M2: `test_accuracy`"
    assert header == documented_metrics_columns() + family_scores, "docs/cli.md's metrics.csv columns differ"
    printed = run_command(["pyrovae", "evaluate", str(run)], tmp_path)
    assert "iwae_bound" in printed, printed


def test_configs_md_lists_every_example_config():
    """docs/configs.md's table of examples names each file of examples/configs/, and no other."""
    text = (ROOT / "docs" / "configs.md").read_text()
    listed = re.findall(r"^\| \[`([\w.-]+\.toml)`\]\(\.\./examples/configs/\1\)", text, re.M)
    assert sorted(listed) == CONFIGS


def test_the_readme_stays_the_front_door():
    """CONTRIBUTING.md: the README is at most 150 lines; the rest of the guide lives in docs/."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
