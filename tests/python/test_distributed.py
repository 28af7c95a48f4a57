"""DistributedDataParallel over the sparsetopk modules matches a single-process run.

Two worker processes (gloo backend, loopback only) train a small mixture-of-experts
model built from SparseLinear and SoftTopKRouter under DDP, each on half of a fixed
batch. Their losses, their (all-reduced) gradients and their parameters after a few
SGD steps must equal, in float64 and to rtol 1e-10, those of one process training
the same model on the whole batch with a mean loss.

The workers are this file run as a script (``python test_distributed.py --worker
...``) by subprocess, so they inherit PYTHONPATH and SPARSETOPK_LIBRARY (made
absolute here). The rendezvous store lives in the test process on a port the OS
picks; every wait has a deadline, and a worker that dies makes the test fail at
once (the other worker is killed) instead of leaving it blocked in a collective.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import pytest
import sparsetopk

WORLD_SIZE = 2
BATCH = 16            # each rank takes BATCH // WORLD_SIZE consecutive samples
D_IN, D_HIDDEN, D_OUT = 6, 8, 3
NUM_EXPERTS, TOP_K = 4, 2
STEPS = 4
LR, MOMENTUM = 0.2, 0.9
DTYPE = torch.float64
RTOL, ATOL = 1e-10, 1e-13
COLLECTIVE_TIMEOUT = timedelta(seconds=30)   # gloo / store waits inside the workers
HARNESS_TIMEOUT_S = 90.0                     # hard limit on the whole worker run
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


# ---- the worker (this file run as a script) ----

def worker_main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--mode", choices=["train", "crash"], required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    clock = time.monotonic()

    store = dist.TCPStore("127.0.0.1", args.port, is_master=False, timeout=COLLECTIVE_TIMEOUT)
    dist.init_process_group("gloo", store=store, rank=args.rank, world_size=WORLD_SIZE,
                            timeout=COLLECTIVE_TIMEOUT)
    try:
        if args.mode == "crash" and args.rank == 1:
            os._exit(CRASH_CODE)   # dies without a word, leaving rank 0 waiting in DDP's broadcast
        print(f"rank {args.rank}: joined the group in {time.monotonic() - clock:.2f} s", flush=True)
        model = make_model()
        ddp = nn.parallel.DistributedDataParallel(model)
        x, target = make_data()
        part = rank_slice(args.rank)
        losses, grads, final = train(model, ddp, x[part], target[part])
        dist.barrier()
        torch.save({"losses": losses, "grads": grads, "final": final},
                   Path(args.out) / f"rank{args.rank}.pt")
        print(f"rank {args.rank}: done in {time.monotonic() - clock:.2f} s", flush=True)
    finally:
        dist.destroy_process_group()
    return 0


# ---- the harness ----

class WorkerFailure(AssertionError):
    """A worker failed or the run timed out; `returncodes` holds every worker's exit
    status once all are gone (negative: killed by that signal)."""

    returncodes = None


def _log_tail(path, limit=3000):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "<no log>"
    return text[-limit:]


def run_workers(mode, out_dir, timeout=HARNESS_TIMEOUT_S, while_waiting=None):
    """Runs the WORLD_SIZE workers to completion; raises WorkerFailure (after killing
    the rest) as soon as one exits non-zero, or when `timeout` seconds have passed.
    `while_waiting()` is called once the workers are started; returns its result."""
    out_dir = Path(out_dir)
    env = os.environ.copy()
    package_root = str(Path(sparsetopk.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if env.get("SPARSETOPK_LIBRARY"):
        env["SPARSETOPK_LIBRARY"] = str(Path(env["SPARSETOPK_LIBRARY"]).resolve())
    env["OMP_NUM_THREADS"] = "1"
    if "GLOO_SOCKET_IFNAME" not in env:
        loopback = [name for _, name in socket.if_nameindex() if name in ("lo", "lo0")]
        if loopback:
            env["GLOO_SOCKET_IFNAME"] = loopback[0]

    # The rendezvous server lives here, on a port the OS picks: no race for a free port.
    store = dist.TCPStore("127.0.0.1", 0, world_size=WORLD_SIZE, is_master=True,
                          wait_for_workers=False, timeout=COLLECTIVE_TIMEOUT)
    procs, logs = [], []
    result = failure = None
    deadline = time.monotonic() + timeout
    try:
        for rank in range(WORLD_SIZE):
            log = open(out_dir / f"rank{rank}.log", "wb")
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", "--mode", mode,
                 "--rank", str(rank), "--port", str(store.port), "--out", str(out_dir)],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
        if while_waiting is not None:
            result = while_waiting()
        while True:
            codes = [p.poll() for p in procs]
            failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                rank, code = failed[0]
                failure = WorkerFailure(f"rank {rank} exited with code {code}:\n"
                                        f"{_log_tail(out_dir / f'rank{rank}.log')}")
                raise failure
            if all(code == 0 for code in codes):
                return result
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- rank {r} ---\n{_log_tail(out_dir / f'rank{r}.log')}" for r in range(WORLD_SIZE))
                failure = WorkerFailure(f"the workers did not finish within {timeout} s:\n{tails}")
                raise failure
            time.sleep(0.02)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        for log in logs:
            log.close()
        if failure is not None:
            failure.returncodes = [p.returncode for p in procs]
        del store


def _skip_unless_gloo():
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")


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


def test_ddp_matches_single_process(tmp_path):
    _skip_unless_gloo()
    ref = run_workers("train", tmp_path, while_waiting=reference_run)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]

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


def test_worker_crash_fails_fast(tmp_path):
    _skip_unless_gloo()
    with pytest.raises(WorkerFailure, match=f"rank 1 exited with code {CRASH_CODE}") as failure:
        run_workers("crash", tmp_path, timeout=60)
    # Rank 0, which can only wait for its dead peer, was killed at once rather than
    # left to run into its own gloo timeout (it would then exit with code 1).
    assert failure.value.returncodes == [-signal.SIGKILL, CRASH_CODE]
    assert not (tmp_path / "rank0.pt").exists()


if __name__ == "__main__" and "--worker" in sys.argv:
    sys.exit(worker_main(sys.argv[1:]))
