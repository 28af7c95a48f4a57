"""The row operators on DTensor inputs (sparsetopk/_dtensor.py), on a CPU mesh of 2 and 4 gloo processes.

One launch per world size (tests/python/_processes.py, as in
test_global_distributed.py): every worker builds the same full tensors from
seeds, distributes them on a 1-D DeviceMesh("cpu", ...), runs the operators
forward and backward, and compares ``full_tensor()`` of the results with the
row operator on the full tensor in that process; it returns the largest
differences and the output placements, which the tests check:
- Shard(0) with dim = -1: stays Shard(0), equal bitwise (the local op on whole rows);
- Shard along dim (rows spread over the ranks, unevenly): the global solve per
  row, to the engine's tolerance (docs/global.md: 1e-12), placements kept and
  the row state replicated; the hard ops, topk_sum and topk_loss too;
- on 4 processes, a 2 x 2 mesh with [Shard(0), Shard(1)] and dim = 1 (the
  global solve over the mesh dimension's subgroup, per row);
- Replicate stays replicated, Partial comes out replicated;
- the register_sharding rules alone (the handler taken out): Shard(0) propagates.
"""

import pytest
import torch

import _processes
import sparsetopk

TOL = 1e-12


def _full(shape, seed, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _diff(a, b) -> float:
    return float((a - b).detach().abs().max()) if a.numel() else 0.0


def _check(results, name, dtensor, expected):
    """The largest difference from the full-tensor result, and the placements."""
    results[name] = (_diff(dtensor.full_tensor(), expected), tuple(str(p) for p in dtensor.placements))


def _soft_cases(results, mesh, placements, shape, dim, label):
    from torch.distributed.tensor import distribute_tensor
    for form in ("mask", "mag"):
        op = getattr(sparsetopk, f"soft_topk_{form}")
        for p in (4.0 / 3.0, 2.0):
            full = _full(shape, seed=3).requires_grad_()
            v = _full(shape, seed=4)
            expected = op(full, 5, l=0.3, p=p, dim=dim)
            (expected_grad,) = torch.autograd.grad(expected, full, v)
            x = distribute_tensor(full.detach(), mesh, placements).requires_grad_()
            out = op(x, 5, l=0.3, p=p, dim=dim)
            (grad,) = torch.autograd.grad(out, x, distribute_tensor(v, mesh, placements))
            _check(results, (label, form, p, "forward"), out, expected.detach())
            _check(results, (label, form, p, "backward"), grad, expected_grad)
    full = _full(shape, seed=5)
    x = distribute_tensor(full, mesh, placements)
    for form in ("mask", "mag"):
        op = getattr(sparsetopk, f"hard_topk_{form}")
        _check(results, (label, "hard", form), op(x, 4, dim=dim), op(full, 4, dim=dim))
    # forward-mode through the JVP op: the row state and the tangent
    state_op = torch.ops.sparsetopk._soft_topk_mag_forward
    _, state = state_op(x, 4, 0.3, 4.0 / 3.0, dim, "auto")
    results[(label, "state")] = tuple(str(p) for p in state.placements)
    tangent = _full(shape, seed=6)
    jvp = torch.ops.sparsetopk._soft_topk_mag_jvp(distribute_tensor(tangent, mesh, placements), x, state,
                                                   0.3, 4.0 / 3.0, dim)
    _, expected_state = state_op(full, 4, 0.3, 4.0 / 3.0, dim, "auto")
    expected_jvp = torch.ops.sparsetopk._soft_topk_mag_jvp(tangent, full, expected_state, 0.3, 4.0 / 3.0, dim)
    _check(results, (label, "jvp"), jvp, expected_jvp)


def _reduction_cases(results, mesh, placements, shape, dim, label):
    from torch.distributed.tensor import Replicate, distribute_tensor
    full = _full(shape, seed=7).requires_grad_()
    expected = sparsetopk.topk_sum(full, 4, l=0.2, dim=dim)
    (expected_grad,) = torch.autograd.grad(expected.sum(), full)
    x = distribute_tensor(full.detach(), mesh, placements).requires_grad_()
    value = sparsetopk.topk_sum(x, 4, l=0.2, dim=dim)
    (grad,) = torch.autograd.grad(value.sum(), x)
    _check(results, (label, "topk_sum"), value, expected.detach())
    _check(results, (label, "topk_sum grad"), grad, expected_grad)
    moved = full.detach().movedim(dim, -1)
    target = torch.randint(0, moved.shape[-1], moved.shape[:-1], generator=torch.Generator().manual_seed(8))
    scores = full.detach().clone().requires_grad_()
    expected = torch.ops.sparsetopk.topk_loss(scores, target, 3, 0.2, 4.0 / 3.0, dim)
    (expected_grad,) = torch.autograd.grad(expected.sum(), scores)
    x = distribute_tensor(full.detach(), mesh, placements).requires_grad_()
    target_d = distribute_tensor(target, mesh, [Replicate()])
    loss = torch.ops.sparsetopk.topk_loss(x, target_d, 3, 0.2, 4.0 / 3.0, dim)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    _check(results, (label, "topk_loss"), loss, expected.detach())
    _check(results, (label, "topk_loss grad"), grad, expected_grad)


def _worker(rank, world):
    """Every case on one rank (in the default group, _processes.run); returns the results."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
    mesh = init_device_mesh("cpu", (world,))
    results = {}
    # rows sharded (Shard(0)), the top-k along the last dim: local rows
    _soft_cases(results, mesh, [Shard(0)], (2 * world + 1, 30), -1, "rows")
    _reduction_cases(results, mesh, [Shard(0)], (2 * world + 1, 30), -1, "rows")
    # sharded along dim (uneven: 2 rows of 3 * world + 1 entries; the first dim holds the top-k)
    _soft_cases(results, mesh, [Shard(0)], (3 * world + 1, 2), 0, "along dim")
    _reduction_cases(results, mesh, [Shard(1)], (2, 5 * world + 2), 1, "along dim")
    # one long row along dim: a wide window, the band solved by reductions
    _soft_cases(results, mesh, [Shard(0)], (997,), 0, "one row")
    if world == 4:  # a 2 x 2 mesh: rows over mesh dim 0, the top-k's dim over mesh dim 1 (a subgroup)
        mesh2 = init_device_mesh("cpu", (2, 2))
        full = _full((5, 9), seed=11).requires_grad_()
        v = _full((5, 9), seed=12)
        expected = sparsetopk.soft_topk_mag(full, 3, l=0.3, dim=1)
        (expected_grad,) = torch.autograd.grad(expected, full, v)
        x = distribute_tensor(full.detach(), mesh2, [Shard(0), Shard(1)]).requires_grad_()
        out = sparsetopk.soft_topk_mag(x, 3, l=0.3, dim=1)
        (grad,) = torch.autograd.grad(out, x, distribute_tensor(v, mesh2, [Shard(0), Shard(1)]))
        _check(results, "2-D mesh", out, expected.detach())
        _check(results, "2-D mesh grad", grad, expected_grad)
    # Replicate stays replicated; Partial is replicated first
    full = _full((3, 8), seed=9)
    out = sparsetopk.soft_topk_mag(distribute_tensor(full, mesh, [Replicate()]), 3)
    _check(results, "replicate", out, sparsetopk.soft_topk_mag(full, 3))
    partial = DTensor.from_local(full / world, mesh, [Partial()], run_check=False)
    out = sparsetopk.soft_topk_mag(partial, 3)
    _check(results, "partial", out, sparsetopk.soft_topk_mag(full, 3))
    # the register_sharding rules without the handler
    handlers = DTensor._op_dispatcher._custom_op_handlers
    op = torch.ops.sparsetopk.hard_topk_mag.default
    handler = handlers.pop(op)
    try:
        full = _full((2 * world, 8), seed=10)
        out = torch.ops.sparsetopk.hard_topk_mag(distribute_tensor(full, mesh, [Shard(0)]), 3, -1)
        _check(results, "rule", out, sparsetopk.hard_topk_mag(full, 3))
    finally:
        handlers[op] = handler
    return results


@pytest.fixture(scope="module", params=[2, 4], ids=["2 ranks", "4 ranks"])
def world(request):
    return request.param, _processes.run(_worker, request.param)


def _cases(results, label):
    return {key: value for key, value in results.items() if isinstance(key, tuple) and key[0] == label}


def test_rows_sharded_off_dim_stay_sharded_and_equal(world):
    size, results = world
    cases = _cases(results[0], "rows")
    assert len(cases) == 2 * 2 * 2 + 2 + 2 + 4
    for key, value in cases.items():
        if key[1] == "state":
            assert value == ("S(0)",), key
            continue
        difference, placements = value
        assert difference == 0.0, key  # whole rows: the local op, bitwise
        assert placements == ("S(0)",), key


@pytest.mark.parametrize("label", ["along dim", "one row"])
def test_sharded_along_dim_runs_the_global_solve(world, label):
    size, results = world
    cases = _cases(results[0], label)
    assert len(cases) == (2 * 2 * 2 + 2 + 2 + (4 if label == "along dim" else 0))
    worst = 0.0
    for key, value in cases.items():
        if key[1] == "state":
            assert value == ("R",), key  # the global solve's state: the same on every rank
            continue
        difference, placements = value
        assert difference <= TOL, (key, difference)
        # x's placement (Shard(1) in the reduction cases), the reduced outputs replicated
        sharded = "S(1)" if key[1] in ("topk_sum grad", "topk_loss grad") else "S(0)"
        assert placements == (("R",) if key[1] in ("topk_sum", "topk_loss") else (sharded,)), key
        worst = max(worst, difference)
    for r in range(1, size):
        assert _cases(results[r], label) == cases
    print(f"\n{size} ranks, {label}: max |difference| from the full tensor {worst:.3g}")


def test_replicate_and_partial_come_out_replicated(world):
    size, results = world
    assert results[0]["replicate"] == (0.0, ("R",))
    difference, placements = results[0]["partial"]
    assert placements == ("R",) and difference <= TOL


def test_register_sharding_rule_alone(world):
    size, results = world
    assert results[0]["rule"] == (0.0, ("S(0)",))


def test_two_dimensional_mesh(world):
    size, results = world
    if size != 4:
        pytest.skip("a 2 x 2 mesh needs 4 processes")
    for r in range(size):
        for name in ("2-D mesh", "2-D mesh grad"):
            difference, placements = results[r][name]
            assert difference <= TOL and placements == ("S(0)", "S(1)"), (r, name, difference, placements)
