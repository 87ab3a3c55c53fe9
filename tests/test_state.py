"""pyrovae.inference.state: modules a pair reaches, modes switched and restored, snapshots restored exactly."""
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.inference.state import Snapshot, modes, modules_of, preserved

NET = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))


def global_model(x):
    pyro.module("net", NET)
    return NET(x)


class Owner(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))

    def model(self, x):
        return self.net(x)


def test_modules_of_owner_globals_and_closure():
    owner = Owner()
    inner = nn.Linear(2, 2)

    def closure(x):
        return inner(x)

    found = modules_of(owner.model, global_model, closure, None)
    assert [id(m) for m in found] == [id(owner), id(NET), id(inner)]
    assert modules_of(owner.model, owner.net.__call__) == [owner]  # a submodule of a module found is not listed


def test_modes_switch_and_restore_each_module():
    owner = Owner()
    owner.net[1].eval()  # a mixed state: the outer modules training, the BatchNorm not
    with modes([owner], training=False):
        assert not any(m.training for m in owner.modules())
    assert owner.training and owner.net[0].training and not owner.net[1].training


def test_snapshot_restores_parameters_buffers_modes_and_rng():
    pyro.clear_param_store()
    owner = Owner()
    loc = pyro.param("loc", torch.zeros(3))
    before = {k: v.clone() for k, v in owner.state_dict().items()}
    rng = torch.get_rng_state()
    with preserved([owner]):
        owner.train()
        owner.model(torch.randn(8, 3) * 5 + 3)  # moves BatchNorm's running statistics
        with torch.no_grad():
            owner.net[0].weight.add_(1.0)
            loc.add_(2.0)
        owner.eval()
        assert not torch.equal(owner.net[1].running_mean, before["net.1.running_mean"])
    after = owner.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert torch.equal(pyro.param("loc"), torch.zeros(3))
    assert owner.training
    assert torch.equal(torch.get_rng_state(), rng)


def test_snapshot_restore_is_in_place():
    owner = Owner()
    weight = owner.net[0].weight
    snap = Snapshot([owner])
    with torch.no_grad():
        weight.mul_(0)
    snap.restore()
    assert owner.net[0].weight is weight and weight.abs().sum() > 0


def test_a_dry_run_creates_parameters_and_leaves_buffers_modes_and_rng():
    """pair_params (how a checkpoint's pair is rebuilt before loading) runs the pair once: the
    parameters it creates stay, a BatchNorm's running statistics and the random state do not move."""
    from pyrovae.inference.traces import pair_params

    pyro.clear_param_store()
    owner = Owner()

    def model(x):
        pyro.module("owner", owner)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(owner.model(x), 1.0).to_event(1), obs=x)

    def guide(x):
        pass

    x = torch.randn(8, 3) * 5 + 3
    stats, rng = owner.net[1].running_mean.clone(), torch.get_rng_state()
    params = pair_params(model, guide, x)
    assert set(params) == {"owner$$$net.0.weight", "owner$$$net.0.bias", "owner$$$net.1.weight", "owner$$$net.1.bias"}
    assert torch.equal(owner.net[1].running_mean, stats) and owner.net[1].num_batches_tracked.item() == 0
    assert torch.equal(torch.get_rng_state(), rng) and owner.training
