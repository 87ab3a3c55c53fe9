"""Data-parallel training (pyrovae.inference.distributed): 2 processes on the CPU (gloo).

The pair is a linear Gaussian model with a Delta guide, z = A x + c: its ELBO has no Monte Carlo
noise, so two ranks on shards of each minibatch and one process on the whole minibatch must take
the same steps, up to the order of float32 sums. N = 66 and B = 16 make the last minibatch 2
points (one per rank), which checks the weighting of unequal minibatches too.
"""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from pyrovae.errors import ConfigError, InputError, TrainingError
from pyrovae.inference import distributed
from pyrovae.inference.arguments import ModelArguments
from pyrovae.inference.train import train

N, B, D, L, EPOCHS = 66, 16, 4, 2, 2


class LinearDelta(nn.Module):
    """p(z) = N(0, I_2), p(x|z) = N(W z + b, 0.5² I_4); q(z|x) = δ(z − (A x + c)): a deterministic ELBO."""

    def __init__(self):
        super().__init__()
        self.dec, self.enc = nn.Linear(L, D), nn.Linear(D, L)

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 0.5).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(self.enc(x), event_dim=1))


def data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(N, D, generator=g) * 2 + 1, torch.randn(20, D, generator=g) * 2 + 1


def fit(epochs, checkpoint=None, resume=False, init_seed=0):
    """Train a fresh LinearDelta (built with ``init_seed``); return (parameters, history)."""
    pyro.clear_param_store()
    torch.manual_seed(init_seed)
    pair = LinearDelta()
    x, test = data()
    history = train(pair.model, pair.guide, x, epochs=epochs, batch_size=B, lr=0.05, test_data=test, seed=1,
                    device="cpu", progress=False, checkpoint=checkpoint, resume=resume)
    return {k: v.detach().clone() for k, v in pair.state_dict().items()}, history


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    assert distributed.init_from_env("cpu") and distributed.world_size() == world
    try:
        # rank 1 builds its model from another seed: the broadcast must make it rank 0's
        straight = fit(EPOCHS, init_seed=rank)
        first = fit(1, checkpoint=os.path.join(out, "ckpt.pt"), init_seed=rank)
        resumed = fit(EPOCHS, checkpoint=os.path.join(out, "ckpt.pt"), resume=True, init_seed=rank + 7)
        torch.save({"straight": straight, "first": first, "resumed": resumed}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        distributed.shutdown()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.slow
def test_two_ranks_hold_identical_parameters(two_ranks):
    for key in ("straight", "resumed"):
        for name, value in two_ranks[0][key][0].items():
            assert torch.equal(value, two_ranks[1][key][0][name]), (key, name)
    # both ranks record the same history (losses and sharded test ELBOs are all-reduced)
    for row0, row1 in zip(two_ranks[0]["straight"][1], two_ranks[1]["straight"][1]):
        assert row0["train_elbo"] == row1["train_elbo"] and row0["test_elbo"] == row1["test_elbo"]


@pytest.mark.slow
def test_two_ranks_equal_one_process_on_the_global_batch(two_ranks):
    params, history = fit(EPOCHS)
    torch.manual_seed(0)
    initial = LinearDelta().state_dict()
    for name, value in params.items():
        torch.testing.assert_close(two_ranks[0]["straight"][0][name], value, rtol=1e-4, atol=1e-5)
    # training moved the parameters: the comparison is not between two initial states
    assert max((params[k] - initial[k]).abs().max().item() for k in params) > 0.05
    for row, ref in zip(two_ranks[0]["straight"][1], history):
        assert row["train_elbo"] == pytest.approx(ref["train_elbo"], rel=1e-5)
        assert row["test_elbo"] == pytest.approx(ref["test_elbo"], rel=1e-5)


@pytest.mark.slow
def test_a_resumed_two_rank_run_continues_exactly(two_ranks):
    for rank in range(2):
        first, resumed, straight = (two_ranks[rank][k] for k in ("first", "resumed", "straight"))
        assert len(first[1]) == 1 and len(resumed[1]) == EPOCHS
        for name, value in straight[0].items():
            assert torch.equal(resumed[0][name], value), (rank, name)
        assert [r["test_elbo"] for r in resumed[1]] == [r["test_elbo"] for r in straight[1]]


def test_shards_cover_each_global_minibatch_once():
    x = torch.arange(N, dtype=torch.float32).unsqueeze(1)
    args = ModelArguments(x)
    whole = [a[0] for a, _ in args.batches(B, epoch=3)]
    parts = [[a[0] for a, _ in args.batches(B, epoch=3, shard=(r, 2))] for r in range(2)]
    assert [len(p) for p in parts[0]] == [8, 8, 8, 8, 1] and [len(p) for p in parts[1]] == [8, 8, 8, 8, 1]
    for w, p0, p1 in zip(whole, *parts):
        assert torch.equal(torch.cat([p0, p1]), w)  # rank 0 the first half of the global minibatch, rank 1 the rest
    # a last global minibatch smaller than the number of ranks joins the one before: no point is dropped
    chunks = [torch.arange(5), torch.arange(5, 7)]
    shards = [distributed.shard_chunks(chunks, r, 3) for r in range(3)]
    assert [[s.tolist() for s in shard] for shard in shards] == [[[0, 1, 2]], [[3, 4]], [[5, 6]]]


@pytest.mark.parametrize("chunks", [list(torch.arange(3).split(1)), [torch.arange(1)]],
                         ids=["batch_size-1", "one-point"])
def test_minibatches_smaller_than_the_ranks_are_an_error_not_an_epoch_without_a_step(chunks):
    with pytest.raises(ConfigError, match=r"a global minibatch of 1 point\(s\) cannot be shared by 2 processes .*"
                                          r"set train.batch_size to at least 2"):
        distributed.shard_chunks(chunks, 0, 2)


def test_without_a_process_group_it_is_one_process():
    assert not distributed.active() and distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.is_main() and distributed.average_step([], 3.5, 16) == (3.5, 16)
    assert distributed.gather_objects("x") == ["x"]


def _failing_peer(rank, case, port, out):
    """Rank 0 shares an error of its own with rank 1 (:func:`distributed.on_main`), then waits in a
    collective while rank 1 exits (``case`` "killed") or stops answering ("stopped"); each rank
    writes the line it got to ``out/<case>-rank<r>.txt``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), PYROVAE_DIST_TIMEOUT_MINUTES="0.05")  # 3 s
    torch.set_num_threads(1)
    distributed.init_from_env("cpu")
    said = Path(out) / f"{case}-rank{rank}.txt"

    def refuse():
        raise InputError("RUN already holds a run")
    try:
        distributed.on_main(refuse)
    except InputError as err:
        said.write_text(str(err) + "\n")
    if rank == 1:  # rank 0 is in its collective: exit at once, or answer nothing until it has given up
        if case == "stopped":
            done = Path(out) / f"{case}-rank0.txt"
            while not (done.exists() and done.read_text().count("\n") == 2):
                time.sleep(0.05)
        os._exit(0)
    try:
        with distributed.peers_watched():
            distributed.barrier()
    except TrainingError as err:
        with open(said, "a") as f:
            f.write(str(err) + "\n")
    os._exit(0)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["killed", "stopped"])
def test_a_failed_rank_is_named_in_one_line_by_the_others(tmp_path, case):
    context = mp.start_processes(_failing_peer, args=(case, free_port(), str(tmp_path)), nprocs=2, join=False,
                                 start_method="spawn")
    for process in context.processes:
        process.join(60)
    rank0 = (tmp_path / f"{case}-rank0.txt").read_text().splitlines()
    assert rank0[0] == (tmp_path / f"{case}-rank1.txt").read_text().strip() == "RUN already holds a run"
    what = ("rank 1 did not answer for 0.05 minutes (PYROVAE_DIST_TIMEOUT_MINUTES): it is stopped or hung"
            if case == "stopped" else "rank 1 stopped (killed, or failed: see its own error)")
    assert rank0[1] == f"rank 0 of 2: {what}; this rank stops too. The last checkpoint is kept: --resume continues the run"


def test_the_process_group_timeout_is_a_setting(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_VAR, raising=False)
    assert distributed.default_timeout() == distributed.DEFAULT_TIMEOUT_MINUTES == 10
    monkeypatch.setenv(distributed.TIMEOUT_VAR, "2.5")
    assert distributed.default_timeout() == 2.5
    for bad in ("0", "soon", "inf"):
        monkeypatch.setenv(distributed.TIMEOUT_VAR, bad)
        with pytest.raises(ConfigError, match=f"PYROVAE_DIST_TIMEOUT_MINUTES must be a positive number of minutes, "
                                              f"got '{bad}'"):
            distributed.default_timeout()


@pytest.mark.slow
def test_torchrun_two_processes_write_one_run_dir(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pyrovae",
           "train", "--out", str(out), "--set", "data.dataset=ppca", "--set", "model.latent_dim=2",
           "--set", "model.hidden=[16]", "--set", "model.likelihood=gaussian-learned", "--set", "train.epochs=1",
           "--set", "train.batch_size=500", "--set", "train.device=cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = __import__("json").loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["epochs"] == 1
    assert (out / "metrics.csv").read_text().count("\n") == 2  # the header and one epoch
    assert done.stdout.count("→") == 1  # rank 0 alone reports
    # --resume on two ranks continues the run
    resumed = subprocess.run(cmd[:cmd.index("train") + 1] + ["--out", str(out), "--resume", "--set", "train.epochs=2"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "metrics.csv").read_text().count("\n") == 3
    # into the run again without --resume: every rank says the same line (none dies waiting for rank 0)
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode != 0
    said = [line for line in again.stderr.splitlines() if line.startswith("pyrovae: error: ")]
    assert said == [f"pyrovae: error: {out} already holds a run; pass --resume to continue it or --force to "
                    f"replace it"] * 2, again.stderr[-3000:]
    assert "Connection closed" not in again.stderr and "pyrovae/app/cli.py" not in again.stderr  # torchrun's own report follows
    shutil.rmtree(out)
