"""Runs a function on several processes joined in one gloo group: the harness of the distributed tests
(test_global_distributed.py, test_dtensor.py, test_distributed.py, test_router_expert_choice.py).

    results = _processes.run(function, world, *args)   # [function(0, world, *args), ..., function(world - 1, ...)]

or, to do something in the test process while the workers run:

    with _processes.start(function, world, *args) as workers:
        expected = ...
        results = workers.wait()

`function` is a module-level function of a test module; each rank calls it inside an initialized
default process group (gloo over loopback, the rendezvous store in the test process on a port the
OS picks) and returns something picklable, which comes back to the test process.

The workers are forked from one forkserver per test session that has imported torch, its
distributed packages and sparsetopk once (PRELOAD): each worker starts in a fraction of a second
instead of importing them again (seconds each, on every rank of every launch). Each launch still
gets fresh processes, so no state passes from one to the next; each runs torch on one thread (up to
4 share the cores). The workers see the environment and working directory of the test process as
they were at the first launch, when the forkserver started.

Every wait has a deadline, and a worker that raises or dies makes the launch fail at once with its
traceback or its exit code and its log (a worker that dies is reported before the errors it causes
in its peers' collectives); then every worker still there is killed, the one that raised too
(WorkerFailure.returncodes holds every worker's exit status).
"""

import multiprocessing
import multiprocessing.connection
import os
import pickle
import shutil
import signal
import socket
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

# What the forkserver imports once, before it forks the workers (torch.optim brings torch._dynamo,
# seconds of its own; FSDP2, DTensor and DDP import their packages).
PRELOAD = ["torch", "torch.distributed", "torch.distributed.tensor", "torch.distributed.fsdp",
           "torch.distributed.device_mesh", "torch.nn.parallel", "torch._dynamo", "torch.optim",
           "pytest", "sparsetopk", "sparsetopk.prune", "_processes"]
COLLECTIVE_TIMEOUT = timedelta(seconds=60)   # gloo and store waits inside the workers
TIMEOUT_S = 180.0                            # the whole launch, from the test process

_context = None


class WorkerFailure(AssertionError):
    """A worker raised, died or did not finish in time; `returncodes` holds every worker's exit
    status once all are gone (negative: killed by that signal)."""

    returncodes = None


def _get_context():
    global _context
    if _context is None:
        # (the forkserver starts with this process's sys.path, which holds this folder: the
        # workers import the test modules by name, to find the function they run)
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _loopback():
    names = [name for _, name in socket.if_nameindex() if name in ("lo", "lo0")]
    return names[0] if names else None


def _worker(function, rank, world, port, connection, log_path, args):
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    torch.set_num_threads(1)
    if "GLOO_SOCKET_IFNAME" not in os.environ and _loopback():
        os.environ["GLOO_SOCKET_IFNAME"] = _loopback()
    try:
        store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=COLLECTIVE_TIMEOUT)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
        result = function(rank, world, *args)
        dist.barrier()
        message = pickle.dumps(("result", result))
    except BaseException:  # noqa: B902  (the test process reports it, and kills every rank)
        connection.send_bytes(pickle.dumps(("error", traceback.format_exc())))
        try:
            connection.recv_bytes()  # nothing comes: waits to be killed (or for the test process to go)
        finally:
            os._exit(1)
    connection.send_bytes(message)
    connection.close()
    dist.destroy_process_group()


def _tail(path, limit=3000):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "<no log>"
    return text[-limit:] if text else "<empty log>"


class Workers:
    """`world` processes running function(rank, world, *args); see start()."""

    def __init__(self, function, world, args, timeout):
        self.world = world
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.log_dir = Path(tempfile.mkdtemp(prefix="sparsetopk-workers-"))
        context = _get_context()
        # the rendezvous store lives here, on a port the OS picks: no race for a free port
        self.store = dist.TCPStore("127.0.0.1", 0, world_size=world, is_master=True, wait_for_workers=False,
                                   timeout=COLLECTIVE_TIMEOUT)
        self.processes, self.connections = [], []
        for rank in range(world):
            here, there = context.Pipe()
            process = context.Process(target=_worker, name=f"rank {rank}", daemon=True,
                                      args=(function, rank, world, self.store.port, there,
                                            str(self.log_dir / f"rank{rank}.log"), args))
            process.start()
            there.close()
            self.processes.append(process)
            self.connections.append(here)

    def _log(self, rank):
        return _tail(self.log_dir / f"rank{rank}.log")

    def _message(self, rank):
        """("result" | "error", value) from the rank, or ("died", None) where it exited without one."""
        connection = self.connections[rank]
        if connection.poll():
            try:
                return pickle.loads(connection.recv_bytes())
            except EOFError:  # closed without a message
                pass
        return "died", None

    def _died_soon(self, ranks, grace=1.0):
        """One of the ranks that exits without a message within `grace` seconds, or None."""
        end = time.monotonic() + grace
        ranks = set(ranks)
        while ranks:
            ready = multiprocessing.connection.wait([self.processes[r].sentinel for r in ranks],
                                                    timeout=max(0.0, end - time.monotonic()))
            if not ready:
                return None
            for rank in sorted(r for r in ranks if self.processes[r].sentinel in ready):
                if self._message(rank)[0] == "died":
                    return rank
                ranks.discard(rank)
        return None

    def wait(self):
        """Every rank's return value, in rank order; raises WorkerFailure (after killing the
        other workers) as soon as one raises or exits without a result, or at the deadline."""
        results = [None] * self.world
        pending = set(range(self.world))
        failure = None
        try:
            while pending:
                left = self.deadline - time.monotonic()
                waiting = {self.connections[r]: r for r in pending}
                waiting.update({self.processes[r].sentinel: r for r in pending})
                ready = multiprocessing.connection.wait(list(waiting), timeout=max(0.0, left))
                if not ready:
                    logs = "\n".join(f"--- rank {r} ---\n{self._log(r)}" for r in sorted(pending))
                    failure = WorkerFailure(f"the workers did not finish within {self.timeout} s:\n{logs}")
                    raise failure
                for rank in sorted({waiting[obj] for obj in ready}):
                    kind, value = self._message(rank)
                    if kind == "result":
                        results[rank] = value
                        pending.discard(rank)
                        continue
                    if kind == "error":
                        # a rank whose peer died fails in its next collective, and may say so first:
                        # report the dead peer, the cause
                        dead = self._died_soon(pending - {rank})
                        if dead is not None:
                            rank, kind = dead, "died"
                    if kind == "error":
                        failure = WorkerFailure(f"rank {rank} raised:\n{value}\n--- its log ---\n{self._log(rank)}")
                    else:
                        self.processes[rank].join(timeout=10)
                        failure = WorkerFailure(f"rank {rank} exited with code {self.processes[rank].exitcode}:\n"
                                                f"{self._log(rank)}")
                    raise failure
            for process in self.processes:
                process.join(timeout=30)
            return results
        finally:
            self.close(failure)

    def close(self, failure=None):
        for process in self.processes:
            if process.exitcode is None and process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
        for process in self.processes:
            process.join(timeout=10)
        for connection in self.connections:
            connection.close()
        if failure is not None:
            failure.returncodes = [process.exitcode for process in self.processes]
        else:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def skip_unless_gloo():
    import pytest
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")


def start(function, world, *args, timeout=TIMEOUT_S):
    """Starts `world` workers running function(rank, world, *args) in one gloo group."""
    skip_unless_gloo()
    return Workers(function, world, args, timeout)


def run(function, world, *args, timeout=TIMEOUT_S):
    """[function(rank, world, *args) for each rank], each on its own process in one gloo group."""
    with start(function, world, *args, timeout=timeout) as workers:
        return workers.wait()
