"""DistributedDataParallel over the sparsetopk modules matches a single-process run.

Two worker processes (gloo backend, loopback only) train a small mixture-of-experts
model built from SparseLinear and SoftTopKRouter under DDP, each on half of a fixed
batch. Their losses, their (all-reduced) gradients and their parameters after a few
SGD steps must equal, in float64 and to rtol 1e-10, those of one process training
the same model on the whole batch with a mean loss.

The workers are started by tests/python/_processes.py (the harness of every
distributed test): the rendezvous store lives in the test process on a port the
OS picks; every wait has a deadline, and a worker that dies makes the test fail
at once (the other worker is killed) instead of leaving it blocked in a
collective, which test_worker_crash_fails_fast checks.
"""

import os
import signal

import torch
from torch import nn

import pytest

import _processes
import sparsetopk

WORLD_SIZE = 2
BATCH = 16            # each rank takes BATCH // WORLD_SIZE consecutive samples
D_IN, D_HIDDEN, D_OUT = 6, 8, 3
NUM_EXPERTS, TOP_K = 4, 2
STEPS = 4
LR, MOMENTUM = 0.2, 0.9
DTYPE = torch.float64
RTOL, ATOL = 1e-10, 1e-13
CRASH_CODE = 3


# ---- the model, the data and the training loop, shared by workers and reference ----

class TinyMoE(nn.Module):
    """SparseLinear encoder -> tanh -> SoftTopKRouter gates * SparseLinear experts."""

    def __init__(self):
        super().__init__()
        self.encoder = sparsetopk.SparseLinear(D_IN, D_HIDDEN, density=0.5, per="row", l=0.05, dtype=DTYPE)
        self.router = sparsetopk.SoftTopKRouter(D_HIDDEN, NUM_EXPERTS, TOP_K, l=0.05, dtype=DTYPE)
        self.experts = nn.ModuleList(
            sparsetopk.SparseLinear(D_HIDDEN, D_OUT, density=0.6, per="layer", l=0.05, dtype=DTYPE)
            for _ in range(NUM_EXPERTS))

    def forward(self, x):
        h = torch.tanh(self.encoder(x))
        gates = self.router(h).gates                                    # (B, E)
        outputs = torch.stack([expert(h) for expert in self.experts], dim=1)  # (B, E, D_OUT)
        return (gates.unsqueeze(-1) * outputs).sum(dim=1), gates


def make_model():
    torch.manual_seed(1234)
    return TinyMoE()


def make_data():
    g = torch.Generator().manual_seed(99)
    x = torch.randn(BATCH, D_IN, generator=g, dtype=DTYPE)
    target = torch.randn(BATCH, D_OUT, generator=g, dtype=DTYPE)
    return x, target


def loss_fn(prediction, target):
    return ((prediction - target) ** 2).mean()   # a mean, as DDP averages gradients


def rank_slice(rank):
    n = BATCH // WORLD_SIZE
    return slice(rank * n, (rank + 1) * n)


def train(model, forward, x, target, observe=None):
    """STEPS of SGD; returns the losses, the gradients seen by each step and the final
    parameters (and, with `observe`, what observe() returned at the start of each step)."""
    names = [name for name, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    velocities = [torch.zeros_like(p) for p in params]
    losses, grads, observed = [], [], []
    for _ in range(STEPS):
        if observe is not None:
            observed.append(observe())
        for p in params:
            p.grad = None
        prediction, _ = forward(x)
        loss = loss_fn(prediction, target)
        loss.backward()
        losses.append(loss.detach().clone())
        grads.append({name: p.grad.detach().clone() for name, p in zip(names, params)})
        with torch.no_grad():   # SGD with momentum, by hand: torch.optim's first step imports
            for p, v in zip(params, velocities):   # torch._dynamo, seconds of start-up per process
                v.mul_(MOMENTUM).add_(p.grad)
                p.sub_(v, alpha=LR)
    final = {name: p.detach().clone() for name, p in zip(names, params)}
    if observe is not None:
        return torch.stack(losses), grads, final, observed
    return torch.stack(losses), grads, final


# ---- the workers (tests/python/_processes.py) ----

def _train(rank, world):
    """One rank: DDP over its half of the batch; its losses, gradients and final parameters."""
    model = make_model()
    ddp = nn.parallel.DistributedDataParallel(model)
    x, target = make_data()
    part = rank_slice(rank)
    losses, grads, final = train(model, ddp, x[part], target[part])
    return {"losses": losses, "grads": grads, "final": final}


def _crash(rank, world):
    """Rank 1 dies without a word, leaving rank 0 waiting in DDP's broadcast."""
    if rank == 1:
        os._exit(CRASH_CODE)
    nn.parallel.DistributedDataParallel(make_model())


def reference_run():
    """One process, the whole batch (on one thread: the tensors are tiny, and the
    workers need the other cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _reference_run()
    finally:
        torch.set_num_threads(threads)


def _reference_run():
    model = make_model()
    x, target = make_data()
    init = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        _, gates = model(x)

    @torch.no_grad()
    def half_losses():   # what each rank's loss should be, with the current parameters
        return torch.stack([loss_fn(model(x[rank_slice(r)])[0], target[rank_slice(r)]) for r in range(WORLD_SIZE)])

    losses, grads, final, halves = train(model, model, x, target, observe=half_losses)
    return {"init": init, "losses": losses, "grads": grads, "final": final,
            "half_losses": torch.stack(halves), "gates": gates, "model": model}


def assert_close(actual, expected, what):
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


def test_ddp_matches_single_process():
    with _processes.start(_train, WORLD_SIZE) as workers:
        ref = reference_run()   # while the workers run
        ranks = workers.wait()

    # The reference is not trivial: the sparsity and the routing are in play and
    # every parameter, the router's included, gets a real gradient.
    gates = ref["gates"]
    experts_used = (gates > 0).sum(dim=1)
    assert experts_used.min() == TOP_K, "no token uses exactly k experts (the mask is never sparse)"
    assert experts_used.max() > TOP_K, "no token has a fractional mask (no gradient through the top-k)"
    assert len(set(gates.argmax(dim=1).tolist())) >= 2, "all tokens go to one expert"
    assert torch.allclose(gates.sum(dim=1), torch.ones(BATCH, dtype=DTYPE))
    for name, module in ref["model"].named_modules():
        if isinstance(module, sparsetopk.SparseLinear):
            assert 0 < module.sparsity() < 1, name
    for step, grads in enumerate(ref["grads"]):
        for name, g in grads.items():
            assert g.abs().max() > 1e-6, f"step {step}: {name} has no gradient"
    assert ref["losses"][-1] < ref["losses"][0]
    for name, p in ref["final"].items():
        assert not torch.equal(p, ref["init"][name]), f"{name} did not move"

    # The sparsity masks the weights' gradients: pruned entries get an exact 0.
    assert (ref["grads"][0]["encoder.weight"] == 0).any()

    # Losses: each rank's is the mean over its half; their mean is the full-batch loss.
    for r, result in enumerate(ranks):
        assert result["losses"].shape == (STEPS,)
        assert_close(result["losses"], ref["half_losses"][:, r], f"rank {r} losses")
    assert_close(sum(result["losses"] for result in ranks) / WORLD_SIZE, ref["losses"], "mean of the rank losses")
    # The halves differ, so equal gradients on both ranks come from the allreduce.
    assert (ranks[0]["losses"] - ranks[1]["losses"]).abs().min() > 1e-3

    # Gradients after DDP's allreduce: equal on both ranks and to the full-batch gradients.
    for step in range(STEPS):
        assert ranks[0]["grads"][step].keys() == ref["grads"][step].keys()
        for name, expected in ref["grads"][step].items():
            assert torch.equal(ranks[0]["grads"][step][name], ranks[1]["grads"][step][name]), \
                f"step {step}: {name} differs between ranks"
            assert_close(ranks[0]["grads"][step][name], expected, f"step {step}: gradient of {name}")

    # Parameters after the last step.
    for name, expected in ref["final"].items():
        for r, result in enumerate(ranks):
            assert_close(result["final"][name], expected, f"rank {r}: final {name}")


def test_worker_crash_fails_fast():
    with pytest.raises(_processes.WorkerFailure, match=f"rank 1 exited with code {CRASH_CODE}") as failure:
        _processes.run(_crash, WORLD_SIZE, timeout=60)
    # Rank 0, which can only wait for its dead peer, was killed at once rather than
    # left to run into its own gloo timeout (it would then return an error).
    assert failure.value.returncodes == [-signal.SIGKILL, CRASH_CODE]
