"""The estimator lab: rows consistent with each other and with the theory (float64, small models)."""
import json

import matplotlib.image
import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyrovae import VAE
from pyrovae.app import plots
from pyrovae.lab import compare
from pyrovae.app.plots import plot_comparison
from pyrovae.lab.compare import compare_estimators, format_table

from conftest import png_pixels

N = 64
KS = (1, 10, 100, 1000)  # 1000 > max_k: left out


def small_vae(**kw):
    torch.manual_seed(1)
    return VAE((6, 5), 3, hidden=(16,), **kw).double()


def data(n=N, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 6, 5, generator=g, dtype=torch.float64)


def run(vae, x=None, **kw):
    kw = {"max_k": 100, "iw_samples": KS, "batch_size": 32, "seed": 0, **kw}
    return compare_estimators(vae, data() if x is None else x, **kw)


def trained_vae():
    """The small VAE after 200 Adam steps on binary images whose pixels share a per-image rate."""
    vae, g = small_vae(), torch.Generator().manual_seed(3)
    x = (torch.rand(N, 6, 5, generator=g, dtype=torch.float64) < torch.rand(N, 1, 1, generator=g)).double()
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(200):
        svi.step(x)
    pyro.clear_param_store()
    return vae, x


@pytest.fixture(scope="module")
def results():
    """Untrained and trained, each with common random numbers (the default) and without."""
    trained, x = trained_vae()
    return {"untrained": run(small_vae()), "untrained-independent": run(small_vae(), common_random_numbers=False),
            "trained": run(trained, x), "trained-independent": run(trained, x, common_random_numbers=False)}


def rows(result):
    return {r["label"]: r for r in result["rows"]}


def diff(result, a, b):
    """The paired difference b − a: (mean, SE)."""
    d = next(d for d in result["differences"] if (d["a"], d["b"]) == (a, b))
    return d["mean"], d["se"]


LABELS = ["mc_elbo r=1", "mc_elbo r=10", "mc_elbo r=100", "analytic_elbo r=1", "closed_form_elbo r=1",
          "iwae_bound k=1", "iwae_bound k=10", "iwae_bound k=100"]


def test_rows_present_and_complete(results):
    result = results["untrained"]
    assert [r["label"] for r in result["rows"]] == LABELS
    assert result["n"] == N and result["iw_samples_left_out"] == [1000]
    assert result["analytic_sites"] == ["z"]
    for r in result["rows"]:
        assert r["available"] and r["reason"] is None
        assert r["mean"] < 0 and r["se"] > 0 and r["estimator_sd"] > 0 and r["seconds"] >= 0
        assert r["sd_n"] == N and r["note"] is None


@pytest.mark.parametrize("which", ["untrained", "trained", "untrained-independent", "trained-independent"])
def test_iwae_means_nondecreasing_in_k_within_4_se(results, which):
    result = results[which]
    for a, b in zip(KS, KS[1:3]):
        mean, se = diff(result, f"iwae_bound k={a}", f"iwae_bound k={b}")
        assert mean > -4 * se, (a, b, mean, se)
    # the paired differences are the differences of the rows' means
    r = rows(result)
    mean, _ = diff(result, "iwae_bound k=10", "iwae_bound k=100")
    assert r["iwae_bound k=100"]["mean"] - r["iwae_bound k=10"]["mean"] == pytest.approx(mean, abs=1e-10)
    assert r["iwae_bound k=100"]["mean"] > r["iwae_bound k=1"]["mean"]


@pytest.mark.parametrize("which", ["untrained-independent", "trained-independent"])
def test_iwae_k1_is_the_mc_elbo_r1_and_analytic_agrees_with_mc(results, which):
    """With independent draws for every row: the same expectation, within 4 paired SE."""
    result = results[which]
    ref = "analytic_elbo r=1"
    k1, se_k1 = diff(result, ref, "iwae_bound k=1")
    r1, se_r1 = diff(result, ref, "mc_elbo r=1")
    assert abs(k1 - r1) < 4 * (se_k1 ** 2 + se_r1 ** 2) ** 0.5
    for r in (1, 10, 100):
        mean, se = diff(result, ref, f"mc_elbo r={r}")
        assert abs(mean) < 4 * se, (r, mean, se)


def test_common_random_numbers_make_equal_estimators_equal(results):
    r = rows(results["untrained"])
    assert r["iwae_bound k=1"]["mean"] == r["mc_elbo r=1"]["mean"]
    independent = rows(results["untrained-independent"])
    assert independent["iwae_bound k=1"]["mean"] != independent["mc_elbo r=1"]["mean"]


@pytest.mark.parametrize("which", ["untrained", "trained"])
def test_closed_form_equals_analytic_for_the_same_seed(results, which):
    r = rows(results[which])
    cf, an = r["closed_form_elbo r=1"], r["analytic_elbo r=1"]
    assert cf["mean"] == pytest.approx(an["mean"], rel=1e-10)
    assert cf["estimator_sd"] == pytest.approx(an["estimator_sd"], rel=1e-8)
    assert diff(results[which], "analytic_elbo r=1", "closed_form_elbo r=1")[0] == pytest.approx(0, abs=1e-10)


@pytest.mark.parametrize("which", ["untrained", "trained"])
def test_estimator_sd_falls_as_one_over_root_r(results, which):
    """sd(r) = sd(1)/√r: 0.316 for r = 10, 0.1 for r = 100. From 2 draws on 64 datapoints each sd
    is known to about ±10 %, so the ratios are allowed a factor of about 1.6 either way."""
    r = rows(results[which])
    sd1 = r["mc_elbo r=1"]["estimator_sd"]
    assert 0.2 < r["mc_elbo r=10"]["estimator_sd"] / sd1 < 0.5
    assert 0.05 < r["mc_elbo r=100"]["estimator_sd"] / sd1 < 0.2


def test_mixture_prior_marks_closed_form_unavailable(tmp_path, monkeypatch):
    result = run(small_vae(prior="mixture"), iw_samples=(1, 10))
    cf = rows(result)["closed_form_elbo r=1"]
    assert not cf["available"] and cf["mean"] is None
    assert "prior 'mixture'" in cf["reason"]
    assert result["analytic_sites"] == []  # no closed-form KL to a mixture: analytic = Monte Carlo
    table = format_table(result)
    assert "unavailable: closed_form_elbo has no closed form" in table
    assert all(d["b"] != "closed_form_elbo r=1" for d in result["differences"])
    # the unavailable row is left out of the plot: the left panel has a tick for each of the others
    figures, save = [], plots.save_figure

    def spy(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "save_figure", spy)
    path = plot_comparison(result, tmp_path / "compare.png")
    assert path == tmp_path / "compare.png" and len(figures) == 1
    left, shown = figures[0].axes[0], [r for r in result["rows"] if r["label"] != "closed_form_elbo r=1"]
    assert [t.get_text() for t in left.get_xticklabels()] == [r["label"] for r in shown]
    assert list(left.lines[0].get_ydata()) == [r["mean"] for r in shown]  # one mean per available row
    png_pixels(path)


def test_format_table_names_every_row(results):
    table = format_table(results["untrained"])
    for r in results["untrained"]["rows"]:
        assert r["name"] in table and f"{r['parameter_name']}={r['parameter']}" in table
    assert "nats per datapoint" in table and "left out (k > max_k): 1000" in table
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("estimator"))
    first = next(line for line in lines if line.startswith("mc_elbo"))
    end = header.index("mean") + len("mean")  # numbers are right-aligned under their heading
    assert first[end - 1].isdigit() and first[end] == " "


def test_plot_is_written_and_not_blank(results, tmp_path):
    path = tmp_path / "compare.png"
    assert plot_comparison(results["untrained"], path) == path
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 400
    assert image[..., :3].std() > 0.05


def test_json_round_trip(results):
    for result in results.values():
        assert json.loads(json.dumps(result, allow_nan=False)) == result


def test_iwae_second_draw_on_a_subset(monkeypatch):
    monkeypatch.setattr(compare, "MIN_SD_POINTS", 8)
    result = run(small_vae(), iw_samples=(1, 10, 100), sd_max_k=1)
    r = rows(result)
    assert r["iwae_bound k=1"]["sd_n"] == N and r["iwae_bound k=1"]["note"] is None
    assert r["iwae_bound k=10"]["sd_n"] == 8 and r["iwae_bound k=100"]["sd_n"] == 8
    assert "second draw on the first 8 of 64" in r["iwae_bound k=100"]["note"]
    assert r["mc_elbo r=100"]["sd_n"] == N
    assert "second draw on the first 8 of 64" in format_table(result)


def test_batches_do_not_change_the_estimates():
    """Batching is only for memory: without randomness in the way, one batch or many agree."""
    vae, x = small_vae(), data(10)
    one = run(vae, x, batch_size=10, particles=(1,), iw_samples=(1,), keep_values=True)
    many = run(vae, x, batch_size=3, particles=(1,), iw_samples=(1,), keep_values=True)
    for a, b in zip(one["rows"], many["rows"]):
        assert len(a["values"]) == 10 and a["mean"] == pytest.approx(sum(a["values"]) / 10)
        # the draws differ between the two batchings; the same datapoints' means are close
        assert abs(a["mean"] - b["mean"]) < 4 * (a["se"] ** 2 + b["se"] ** 2) ** 0.5


def test_progress_bar_and_gradient_variance(capsys):
    result = run(small_vae(), data(8), iw_samples=(1,), particles=(1,), progress=True,
                 gradient_draws=4, gradient_batch=4)
    assert "iwae_bound k=1" in capsys.readouterr().err
    gv = result["gradient_variance"]
    assert gv["num_draws"] == 4 and gv["batch"] == 4 and set(gv["estimators"]) == {"reparam", "score",
                                                                                    "score-baseline"}
    assert "variance ratio score/reparam" in format_table(result)
    assert gv["variance_ratio"]["score/reparam"] > 1  # about 3000 on this model (test_gradients); 4 draws
    assert json.loads(json.dumps(result, allow_nan=False)) == result


def test_single_datapoint_has_no_standard_error():
    result = run(small_vae(), data(1), iw_samples=(1,), particles=(1,))
    assert all(r["se"] is None for r in result["rows"])
    assert all(r["estimator_sd"] > 0 for r in result["rows"])
    # the table shows "—" for the missing SEs (rows and paired differences) and the numbers it has
    lines = format_table(result).splitlines()
    for r in result["rows"]:
        name, param, mean, se, sd = next(line for line in lines if line.startswith(r["name"] + " ")).split()[:5]
        assert (param, se) == (f"{r['parameter_name']}={r['parameter']}", "—")
        assert float(mean) == round(r["mean"], 4) and float(sd) == round(r["estimator_sd"], 4)
    assert result["differences"] and all(d["se"] is None for d in result["differences"])
    start = lines.index(next(line for line in lines if line.startswith("paired differences")))
    assert [line.split()[-1] for line in lines[start + 3:start + 3 + len(result["differences"])]] == \
        ["—"] * len(result["differences"])
    assert json.loads(json.dumps(result, allow_nan=False)) == result


@pytest.mark.parametrize("kw, match", [({"particles": (0,)}, "particles"), ({"iw_samples": (1.5,)}, "iw_samples"),
                                       ({"batch_size": 0}, "batch_size"), ({"max_k": -1}, "max_k")])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        run(small_vae(), data(4), **kw)


def test_bad_data():
    with pytest.raises(ValueError, match="shape"):
        compare_estimators(small_vae(), torch.rand(4, 5, 6, dtype=torch.float64))
