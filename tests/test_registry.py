"""One registry mechanism: a user's own component is one class and one decorator line, then a
name in a TOML config (through the config's ``import`` list or an entry point); and one test
battery over every registered prior, likelihood and guide."""
import json
import sys
import textwrap

import pytest
import torch

from pyrovae import GUIDES, LIKELIHOODS, PRIORS, VAE, Registry
from pyrovae.app import config
from pyrovae.app.cli import main
from pyrovae.registry import import_components, load_plugins

USER_PRIOR = '''
import pyro.distributions as dist
from pyrovae import PRIORS, Prior


@PRIORS.register("{name}")
class StudentT(Prior):
    """p(z) = prod_l StudentT(z_l; df, 0, 1)."""

    def __init__(self, latent_dim, df=4.0):
        super().__init__(latent_dim)
        self.df = df

    def forward(self):
        return dist.StudentT(self.df, self.zero.expand(self.latent_dim), 1.0).to_event(1)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Writes a module registering a prior ``name``; unregisters it and forgets the module after."""
    written = []

    def write(name, module="user_priors", folder=tmp_path):
        (folder / f"{module}.py").write_text(USER_PRIOR.format(name=name))
        written.append((name, module))
        return folder / f"{module}.py"

    monkeypatch.syspath_prepend(str(tmp_path))
    yield write
    for name, module in written:
        if name in PRIORS:
            PRIORS.unregister(name)
        for key in [k for k in sys.modules if k.endswith(module)]:
            del sys.modules[key]


def test_one_decorator_line_makes_a_name():
    reg = Registry("widget", base=torch.nn.Module)

    @reg.register("lin")
    def make(in_features, out_features=2):
        return torch.nn.Linear(in_features, out_features)

    built = reg.build("lin", {"out_features": 3}, in_features=4, unrelated=1)
    assert (built.in_features, built.out_features) == (4, 3)
    module = torch.nn.Identity()
    assert reg.build(module) is module  # an object passes through
    assert list(reg) == ["lin"] and "lin" in reg
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['width'\] for widget 'lin'; valid options: out_features"):
        reg.build("lin", {"width": 3}, in_features=4)
    with pytest.raises(ValueError, match="widget 'lin' is registered twice"):
        reg.register("lin", make)
    with pytest.raises(TypeError, match=r"widget must be a name \(lin\) or a Module instance, got int"):
        reg.build(3)
    assert reg.unregister("lin") is make and "lin" not in reg


def test_a_config_imports_the_users_module_and_validates_its_name(user_module):
    user_module("student-t-1")
    with pytest.raises(config.ConfigError, match="model.prior must be one of"):
        config.validate({"model": {"prior": "student-t-1"}})  # not imported yet
    cfg = config.validate({"import": ["user_priors"], "model": {"prior": "student-t-1", "prior_options": {"df": 2.5}}})
    assert cfg["import"] == ["user_priors"] and cfg["model"]["prior"] == "student-t-1"
    vae = VAE(5, 2, prior=cfg["model"]["prior"], prior_options=cfg["model"]["prior_options"])
    assert type(vae.prior).__name__ == "StudentT" and vae.prior.df == 2.5
    z = torch.zeros(3, 2)
    expected = torch.distributions.StudentT(2.5).log_prob(torch.zeros(())) * 2
    torch.testing.assert_close(vae.prior().log_prob(z), expected.expand(3))


def test_import_errors_name_the_module(tmp_path):
    with pytest.raises(config.ConfigError, match="import 'no_such_module_xyz' failed"):
        config.validate({"import": ["no_such_module_xyz"]})
    with pytest.raises(config.ConfigError, match=r"import must be a list of module names or \.py paths, got 'x'"):
        config.validate({"import": "x"})
    with pytest.raises(config.ConfigError, match="no such file"):
        import_components([str(tmp_path / "missing.py")])


def test_the_cli_trains_and_evaluates_with_a_prior_from_a_py_file(user_module, tmp_path, capsys):
    """A .py path in the config's import list, relative to the config's folder; the run dir's saved
    config re-imports it by absolute path, so `evaluate` finds the prior again."""
    folder = tmp_path / "configs"
    folder.mkdir()
    user_module("student-t-2", module="my_prior", folder=folder)
    (folder / "run.toml").write_text(textwrap.dedent('''
        import = ["my_prior.py"]
        [data]
        dataset = "ppca"
        [model]
        latent_dim = 2
        hidden = [16]
        likelihood = "gaussian"
        prior = "student-t-2"
        [train]
        epochs = 1
        batch_size = 500
        '''))
    out = tmp_path / "run"
    assert main(["train", "--config", str(folder / "run.toml"), "--out", str(out)]) == 0
    saved = (out / "config.toml").read_text()
    assert str(folder / "my_prior.py") in saved and 'prior = "student-t-2"' in saved
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"].startswith("p(z)   = StudentT(z)")
    assert main(["evaluate", str(out), "--iw-samples", "10", "--test-size", "50", "--json"]) == 0
    evaluation = json.loads((out / "evaluation.json").read_text())
    elbo, iwae = evaluation["estimators"]["mc_elbo"]["mean"], evaluation["estimators"]["iwae_bound(k=10)"]["mean"]
    assert -5000 < elbo <= iwae + 4 * evaluation["estimators"]["mc_elbo"]["se"] and iwae < 0  # nats, 5-dim data
    assert evaluation["closed_form_elbo"].endswith("prior 'student-t-2' (needs 'normal')")


def test_an_entry_point_registers_a_plugin(user_module, tmp_path, monkeypatch):
    user_module("student-t-3", module="plugin_priors")
    info = tmp_path / "pyrovae_plugin_test-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pyrovae-plugin-test\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[pyrovae.components]\nstudent = plugin_priors\n")
    assert "student-t-3" not in PRIORS
    assert "student" in load_plugins()
    assert "student-t-3" in PRIORS


# -- one battery over every registered component ---------------------------------------------------
SHAPE, L = (6, 5), 3


@pytest.mark.parametrize("name", PRIORS.names())
def test_every_prior_follows_the_model_to_its_dtype(name):
    """Its tensors live where its module lives (float64 here stands for another device)."""
    vae = VAE(SHAPE, L, prior=name, prior_options={"components": 4} if name in ("mixture", "vamp") else None,
              hidden=(8,)).double()
    p = vae.prior()
    assert p.event_shape == (L,) and p.batch_shape == ()
    z = p.sample((7,))
    assert z.shape == (7, L) and z.dtype == torch.float64
    log_p = p.log_prob(z)
    assert log_p.shape == (7,) and log_p.dtype == torch.float64 and torch.isfinite(log_p).all()


@pytest.mark.parametrize("name", LIKELIHOODS.names())
def test_every_likelihood_gives_an_event_of_the_data_shape(name):
    vae = VAE(SHAPE, L, likelihood=name, hidden=(8,)).double()
    d = vae.likelihood_of(torch.zeros(4, L, dtype=torch.float64))
    assert d.event_shape == SHAPE and d.batch_shape == (4,)
    x = torch.round(torch.rand(4, *SHAPE, dtype=torch.float64) * 255) / 255  # 8-bit levels: every support
    assert d.log_prob(x).shape == (4,) and torch.isfinite(d.log_prob(x)).all()


@pytest.mark.parametrize("name", GUIDES.names())
def test_every_guide_reparameterizes(name):
    vae = VAE(SHAPE, L, guide=name, hidden=(8,)).double()
    x = torch.rand(4, *SHAPE, dtype=torch.float64)
    q = vae.posterior(x)
    assert q.event_shape == (L,) and q.batch_shape == (4,) and q.has_rsample
    z = q.rsample()
    z.sum().backward()
    assert all(p.grad is not None for p in vae.encoder.parameters())


def test_a_bare_module_name_is_found_beside_the_config(user_module, tmp_path, monkeypatch):
    """``import = ["name"]`` with name.py beside the config imports it from any working directory;
    a module found nowhere is one line saying where it was looked for and what to do."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    folder, elsewhere = tmp_path / "configs", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    user_module("student-t-beside", module="beside_prior", folder=folder)
    (folder / "run.toml").write_text('import = ["beside_prior"]\n[model]\nprior = "student-t-beside"\n')
    monkeypatch.chdir(elsewhere)
    assert config.load(folder / "run.toml")["model"]["prior"] == "student-t-beside"
    (folder / "bad.toml").write_text('import = ["nowhere_prior"]\n')
    with pytest.raises(config.ConfigError, match=r"import 'nowhere_prior' failed: no module 'nowhere_prior'.*"
                                                 r"nor nowhere_prior\.py beside the config.*add its folder to PYTHONPATH"):
        config.load(folder / "bad.toml")
