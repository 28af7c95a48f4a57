"""The global operators across processes (group=, docs/global.md), on gloo over loopback.

One launch per world size (2 and 4 processes, tests/python/_processes.py):
every worker runs every scenario and returns its results; the test process
compares them with the row operators on the concatenation of every
rank's tensors in rank order, which it rebuilds from the same seeds:
- forward (bitwise: the window's entries are gathered exactly) and backward
  (to 1e-12 relative: the band's sums are added in another order);
- one tensor sharded unevenly, with a rank that holds nothing;
- the hard operators, and prune.global_magnitude across ranks (soft after a
  training step, and the hard budget);
- a training step of an FSDP2 model (fully_shard, CPU, gloo) whose ranks
  project their shards onto one global budget;
- the bytes each rank sends per call (sparsetopk._global.traffic), printed as
  a table with -s and bounded here.
"""

import time

import pytest
import torch
import torch.distributed as dist
from torch import nn

import _processes
import sparsetopk
import sparsetopk.prune

P_VALUES = [4.0 / 3.0, 2.0, 3.0]
SIZES = [1000, 100_000, 1_000_000]
FORWARD_RTOL = 1e-12   # the band solved by reductions (windows wider than 64 entries per rank)
BACKWARD_RTOL = 1e-12


def _rank_tensors(rank, seed, dtype=torch.float64):
    """Rank r's tensors: a few shapes that differ between ranks (rank 0 has an empty one)."""
    g = torch.Generator().manual_seed(1000 * seed + rank)
    shapes = [(rank + 2, 3), (5 * rank,), (4,)]
    return [torch.randn(shape, generator=g, dtype=dtype) for shape in shapes]


def _cotangent(tensors, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in tensors]


def _uneven_cuts(world, n):
    """Cut points of one tensor of n entries: rank 1 holds nothing, the others unequal shares."""
    cuts = [0]
    for r in range(world):
        cuts.append(cuts[-1] if r == 1 else min(n, cuts[-1] + n * (r + 1) // (world + 2)))
    cuts[-1] = n
    if world == 2:  # rank 0 holds everything
        cuts = [0, n, n]
    return cuts


def _uneven_tensor(n=997):
    return torch.randn(n, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def _fsdp_model():
    torch.manual_seed(11)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))


def _fsdp_batch(rank):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(8, 6, generator=g), torch.randint(0, 4, (8,), generator=g)


def _linear_rows(world):
    """Output rows of a SparseLinear split over the ranks: 3, 5 on 2 ranks; 3, 0, 4, 6 on 4 (rank 1 none)."""
    return [0 if r == 1 and world > 2 else 3 + (2 * r) % 5 for r in range(world)]


def _linear_data(world):
    """The whole layer's weight, an input batch and the output's cotangent (every rank the same)."""
    g = torch.Generator().manual_seed(21)
    out_features = sum(_linear_rows(world))
    return (torch.randn(out_features, 7, generator=g, dtype=torch.float64),
            torch.randn(4, 7, generator=g, dtype=torch.float64),
            torch.randn(4, out_features, generator=g, dtype=torch.float64))


def _sparse_linear(rank, world, group):
    """SparseLinear split by output rows over the ranks, one budget over the layer: forward, backward, hard."""
    rows = _linear_rows(world)
    first = sum(rows[:rank])
    weight, x, cotangent = _linear_data(world)
    layer = sparsetopk.SparseLinear(7, rows[rank], density=0.3, l=0.05, bias=False, dtype=torch.float64, group=group)
    with torch.no_grad():
        layer.weight.copy_(weight[first:first + rows[rank]])
    y = layer(x)
    (y * cotangent[:, first:first + rows[rank]]).sum().backward()
    return layer.kept, y.detach(), layer.weight.grad, layer.hard_pruned_weight()


def _worker(rank, world):
    """Every scenario on one rank (in the default group, _processes.run); returns the results."""
    from sparsetopk import _global
    group = dist.group.WORLD
    results = {}
    # forward and backward of the soft operators
    for form in ("mask", "mag"):
        op = getattr(sparsetopk, f"soft_topk_{form}_global")
        for p in P_VALUES:
            x = [t.requires_grad_() for t in _rank_tensors(rank, seed=1)]
            out = op(x, 9, l=0.4, p=p, group=group)
            grads = torch.autograd.grad(out, x, _cotangent(x, seed=rank))
            results[(form, p)] = ([o.detach() for o in out], list(grads))
    # one tensor sharded unevenly; rank 1 holds nothing
    full = _uneven_tensor()
    cuts = _uneven_cuts(world, full.numel())
    shard = full[cuts[rank]:cuts[rank + 1]].clone().requires_grad_()
    out = sparsetopk.soft_topk_mag_global([shard], 100, l=0.2, group=group)[0]
    (grad,) = torch.autograd.grad(out, shard, torch.ones_like(out))
    results["uneven"] = (out.detach(), grad, shard.numel())
    results["sparse_linear"] = _sparse_linear(rank, world, group)
    # arguments that differ between ranks: every rank fails alike
    try:
        sparsetopk.soft_topk_mag_global(_rank_tensors(rank, seed=1), 5 + rank, group=group)
        results["mismatch"] = None
    except RuntimeError as error:
        results["mismatch"] = str(error)
    # the hard operators
    x = _rank_tensors(rank, seed=2)
    results["hard"] = (sparsetopk.hard_topk_mask_global(x, 7, group=group),
                       sparsetopk.hard_topk_mag_global(x, 7, group=group))
    # pruning across ranks: each rank its own layers, one budget
    torch.manual_seed(rank)
    layers = [nn.Linear(5, 3 + rank), nn.Linear(3 + rank, 2)]
    pruning = sparsetopk.prune.global_magnitude([(m, "weight") for m in layers], sparsity=0.8, hard=True, group=group)
    kept = torch.tensor([float(sum(int((m.weight != 0).sum()) for m in layers))])
    dist.all_reduce(kept)
    results["prune"] = (pruning.k, pruning.total, int(kept.item()))
    # soft pruning across ranks during training: a step, then the weights read again
    torch.manual_seed(10 + rank)
    model = nn.Sequential(nn.Linear(5, 4 + rank, dtype=torch.float64), nn.Tanh(), nn.Linear(4 + rank, 1, dtype=torch.float64))
    soft = sparsetopk.prune.global_magnitude([(model[0], "weight"), (model[2], "weight")], sparsity=0.5, l=0.05,
                                             group=group)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(6, 5, dtype=torch.float64)).pow(2).mean().backward()
    optimizer.step()
    dense = [t.detach().clone() for t in soft.originals()]
    results["prune_soft"] = (soft.k, dense, [model[0].weight.detach(), model[2].weight.detach()])
    # FSDP2: a training step, then every rank projects its shards onto one global budget
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    model = _fsdp_model()
    mesh = init_device_mesh("cpu", (world,))
    for module in model:
        if isinstance(module, nn.Linear):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs, targets = _fsdp_batch(rank)
    loss = nn.functional.cross_entropy(model(inputs), targets)
    loss.backward()
    optimizer.step()
    weights = [model[0].weight, model[2].weight]
    dense = [w.full_tensor().detach().clone() for w in weights]
    with torch.no_grad():
        shards = [w.to_local() for w in weights]
        for s, kept_shard in zip(shards, sparsetopk.hard_topk_mag_global(shards, 30, group=group)):
            s.copy_(kept_shard)
    loss_after = nn.functional.cross_entropy(model(inputs), targets)
    results["fsdp"] = (dense, [w.full_tensor().detach() for w in weights], loss.item(), loss_after.item())
    # bytes per call
    traffic, seconds = {}, {}
    for n in SIZES:
        local = n // world + (1 if rank < n % world else 0)
        x = [torch.randn(local, generator=torch.Generator().manual_seed(rank + 17)).requires_grad_()]
        _global.traffic(reset=True)
        dist.barrier()
        start = time.perf_counter()
        out = sparsetopk.soft_topk_mag_global(x, n // 10, l=1e-2, group=group)
        seconds[n] = time.perf_counter() - start
        forward = _global.traffic(reset=True)
        torch.autograd.grad(out, x, [torch.ones_like(out[0])])
        backward = _global.traffic(reset=True)
        traffic[n] = (forward, backward)
    results["traffic"], results["seconds"] = traffic, seconds
    return results


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.fixture(scope="module", params=[2, 4], ids=["2 ranks", "4 ranks"])
def world(request):
    return request.param, _processes.run(_worker, request.param)


def test_forward_and_backward_equal_the_row_operator_on_the_concatenation(world):
    size, results = world
    x = _flat([_flat(_rank_tensors(r, seed=1)) for r in range(size)]).requires_grad_()
    v = _flat([_flat(_cotangent(_rank_tensors(r, seed=1), seed=r)) for r in range(size)])
    worst = 0.0
    for form in ("mask", "mag"):
        row_op = getattr(sparsetopk, f"soft_topk_{form}")
        for p in P_VALUES:
            expected = row_op(x, 9, l=0.4, p=p)
            (expected_grad,) = torch.autograd.grad(expected, x, v)
            out = _flat([_flat(results[r][(form, p)][0]) for r in range(size)])
            grad = _flat([_flat(results[r][(form, p)][1]) for r in range(size)])
            assert torch.equal(out, expected.detach()), (form, p)
            torch.testing.assert_close(grad, expected_grad, rtol=BACKWARD_RTOL, atol=BACKWARD_RTOL)
            worst = max(worst, float((grad - expected_grad).abs().max()))
    print(f"\n{size} ranks: forward bitwise equal; backward max |difference| {worst:.3g}")


def test_uneven_shards_with_an_empty_rank(world):
    size, results = world
    full = _uneven_tensor().requires_grad_()
    expected = sparsetopk.soft_topk_mag(full, 100, l=0.2)
    (expected_grad,) = torch.autograd.grad(expected, full, torch.ones_like(expected))
    expected = expected.detach()
    assert results[1]["uneven"][2] == 0  # rank 1 held nothing
    out = torch.cat([results[r]["uneven"][0] for r in range(size)])
    grad = torch.cat([results[r]["uneven"][1] for r in range(size)])
    # a wide window (hundreds of entries): the band is solved by reductions, to the solvers' tolerance
    torch.testing.assert_close(out, expected, rtol=FORWARD_RTOL, atol=FORWARD_RTOL)
    torch.testing.assert_close(grad, expected_grad, rtol=BACKWARD_RTOL, atol=BACKWARD_RTOL)
    print(f"\n{size} ranks, uneven shards: max |difference| forward {float((out - expected).abs().max()):.3g}, "
          f"backward {float((grad - expected_grad).abs().max()):.3g}")


def test_sparse_linear_split_over_ranks_equals_the_whole_layer(world):
    size, results = world
    weight, x, cotangent = _linear_data(size)
    layer = sparsetopk.SparseLinear(7, weight.shape[0], density=0.3, l=0.05, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(weight)
    y = layer(x)
    (y * cotangent).sum().backward()
    parts = [results[r]["sparse_linear"] for r in range(size)]
    assert all(kept == layer.kept for kept, _, _, _ in parts)
    assert parts[1][1].shape == (4, 0 if size > 2 else 5)  # (on 4 ranks rank 1 held no rows)
    # (a window of a few entries per rank: gathered and solved as one process solves it)
    torch.testing.assert_close(torch.cat([out for _, out, _, _ in parts], dim=1), y.detach(), rtol=FORWARD_RTOL,
                               atol=FORWARD_RTOL)
    torch.testing.assert_close(torch.cat([grad for _, _, grad, _ in parts]), layer.weight.grad,
                               rtol=BACKWARD_RTOL, atol=BACKWARD_RTOL)
    hard = torch.cat([h for _, _, _, h in parts])
    assert torch.equal(hard, layer.hard_pruned_weight()) and int((hard != 0).sum()) == layer.kept


def test_sparse_linear_group_needs_a_layer_budget():
    with pytest.raises(ValueError, match="group= needs per='layer'.*per = 'row'"):
        sparsetopk.SparseLinear(4, 3, per="row", group=object())
    with pytest.raises(TypeError, match="group must be a torch.distributed ProcessGroup or None, got <object"):
        sparsetopk.SparseLinear(4, 3, group=object())


def test_ranks_passing_different_arguments_all_fail(world):
    size, results = world
    for r in range(size):
        assert "sparsetopk.soft_topk_mag_global: every process must pass the same k: process 0 passed k = 5, " \
               "process 1 k = 6" in results[r]["mismatch"]


def test_hard_operators_and_pruning_budget(world):
    size, results = world
    x = _flat([_flat(_rank_tensors(r, seed=2)) for r in range(size)])
    mask = _flat([_flat(results[r]["hard"][0]) for r in range(size)])
    mag = _flat([_flat(results[r]["hard"][1]) for r in range(size)])
    assert torch.equal(mask, sparsetopk.hard_topk_mask(x, 7))
    assert torch.equal(mag, sparsetopk.hard_topk_mag(x, 7))
    k, total, kept = results[0]["prune"]
    assert total == sum((5 * (3 + r) + (3 + r) * 2) for r in range(size))
    assert k == round(0.2 * total) and kept == k


def test_soft_pruning_across_ranks(world):
    size, results = world
    k = results[0]["prune_soft"][0]
    dense = _flat([_flat(results[r]["prune_soft"][1]) for r in range(size)])
    weights = _flat([_flat(results[r]["prune_soft"][2]) for r in range(size)])
    torch.testing.assert_close(weights, sparsetopk.soft_topk_mag(dense, k, l=0.05), rtol=FORWARD_RTOL, atol=FORWARD_RTOL)


def test_fsdp2_step_with_one_global_budget(world):
    size, results = world
    dense, pruned, loss, loss_after = results[0]["fsdp"]
    for r in range(1, size):  # every rank sees the same full parameters
        assert all(torch.equal(a, b) for a, b in zip(pruned, results[r]["fsdp"][1]))
    assert torch.equal(_flat(pruned), sparsetopk.hard_topk_mag(_flat(dense), 30))
    assert int((_flat(pruned) != 0).sum()) == 30
    assert loss == loss and loss_after == loss_after  # finite training step


def test_bytes_per_call(world):
    size, results = world
    print(f"\n| n | ranks | forward: collectives, bytes sent per rank | backward: collectives, bytes | seconds per forward |")
    rows = []
    for n in SIZES:
        (fwd_calls, fwd_bytes), (bwd_calls, bwd_bytes) = results[0]["traffic"][n]
        seconds = results[0]["seconds"][n]
        print(f"| {n} | {size} | {fwd_calls}, {fwd_bytes} | {bwd_calls}, {bwd_bytes} | {seconds:.4f} |")
        rows.append((n, fwd_calls, fwd_bytes, bwd_calls, bwd_bytes))
    for n, fwd_calls, fwd_bytes, bwd_calls, bwd_bytes in rows:
        for r in range(size):  # every rank sends the same payload
            assert results[r]["traffic"][n] == results[0]["traffic"][n]
        # float32, p = 4/3: 1 gather of the sizes (and k, l, p, checked alike), 4 radix passes of
        # 256 counts, at most 1 max; then
        # either nothing (no block), or 1 gather of the window's sizes and then a window of at most
        # 64 entries per rank gathered, or the band by reductions: at most 12 rounds of 129 sums,
        # 1 gather of the active set's moments, 1 gather of the band's ends
        radix = 5 * 8 + 4 * 256 * 8 + 8
        assert fwd_bytes <= radix + 16 + max(64 * 24, 12 * 129 * 8 + 7 * 8 + 6 * 8)
        assert fwd_calls <= 6 + 1 + 12 + 2
        # the backward: 1 gather of sizes (and l, p, gamma), then (with a band) 1 gather of the pivot
        # and sum c, 1 sum
        assert bwd_calls in (1, 3) and bwd_bytes == (40 + 32 + 8 if bwd_calls == 3 else 40)
