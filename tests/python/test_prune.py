"""sparsetopk.prune.global_magnitude: one global budget through parametrizations.

The parametrized weights equal the global operators on the dense weights
(checked against soft_topk_mag on their concatenation); one solve per forward
pass; a tiny MLP trains; remove() leaves exactly the hard top-k of all the
weights (checked against hard_topk_mag on the concatenation).
"""

import pytest
import torch
from torch import nn

import sparsetopk
import sparsetopk.prune


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def _chosen(model):
    return [(model[0], "weight"), (model[2], "weight"), (model[4], "weight")]


def _flat(tensors):
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def test_weights_are_the_global_soft_topk_of_all_chosen_weights():
    model = _mlp()
    dense = [m.weight.detach().clone() for m, _ in _chosen(model)]
    pruning = sparsetopk.prune.global_magnitude(_chosen(model), sparsity=0.75, l=0.02)
    assert pruning.total == 6 * 16 + 16 * 8 + 8 * 3 and pruning.k == round(0.25 * pruning.total)
    weights = [m.weight for m, _ in _chosen(model)]
    expected = sparsetopk.soft_topk_mag(_flat(dense), pruning.k, l=0.02)
    assert torch.equal(_flat(weights), expected)


def test_hard_budget_keeps_exactly_k():
    model = _mlp(1)
    pruning = sparsetopk.prune.global_magnitude(_chosen(model), sparsity=0.9, hard=True)
    assert int((_flat([m.weight for m, _ in _chosen(model)]) != 0).sum()) == pruning.k


def test_one_solve_per_forward_and_training_works():
    model = _mlp(2)
    pruning = sparsetopk.prune.global_magnitude(_chosen(model), sparsity=0.8, l=0.05)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    losses = []
    for step in range(30):
        before = pruning.solves
        loss = nn.functional.cross_entropy(model(x), y)
        assert pruning.solves == before + 1  # three parametrized weights, one global solve
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    originals = pruning.originals()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in originals)


def test_gradient_accumulation_solves_again():
    model = _mlp(3)
    sparsetopk.prune.global_magnitude(_chosen(model), sparsity=0.5, l=0.05)
    x = torch.randn(8, 6)
    model(x).sum().backward()
    model(x).sum().backward()  # same weights, a second graph


def test_remove_leaves_exactly_the_hard_topk():
    model = _mlp(4)
    pruning = sparsetopk.prune.global_magnitude(_chosen(model), sparsity=0.7, l=0.05)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(16, 6)).pow(2).mean().backward()
        optimizer.step()
    dense = _flat(pruning.originals())
    pruning.remove()
    for module, name in _chosen(model):
        assert not hasattr(module, "parametrizations") or name not in module.parametrizations
        assert isinstance(getattr(module, name), nn.Parameter)
    after = _flat([m.weight for m, _ in _chosen(model)])
    assert torch.equal(after, sparsetopk.hard_topk_mag(dense, pruning.k))
    assert int((after != 0).sum()) == pruning.k


@pytest.mark.parametrize("arguments, error, message", [
    (dict(parameters=[], sparsity=0.5), ValueError, "parameters is empty"),
    (dict(sparsity=1.5), ValueError, "sparsity must be in [0, 1], got sparsity = 1.5"),
    (dict(parameters=[("weight",)]), TypeError, "parameters[0] must be a (module, name) pair"),
])
def test_errors_name_the_argument(arguments, error, message):
    model = _mlp()
    call = dict(parameters=_chosen(model), sparsity=0.5) | arguments
    with pytest.raises(error) as raised:
        sparsetopk.prune.global_magnitude(call["parameters"], call["sparsity"])
    assert message in str(raised.value)
