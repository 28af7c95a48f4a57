"""SoftTopKRouter(choice="expert"): each expert takes a soft top-k of the tokens.

In one process: the mask sums to the capacity per expert, and equals the row
operator along the tokens. Across 2 processes (gloo over loopback, group=):
each rank routes its own tokens, and the gates (and the router's gradient,
summed over ranks) equal one process routing the concatenated tokens.
"""

import pytest
import torch
import torch.distributed as dist

import _processes
import sparsetopk
from sparsetopk.nn import expert_capacity

D, E, K, L = 6, 4, 2, 0.3
CUTS = [0, 13, 32]  # rank 0: 13 tokens, rank 1: 19


def _tokens():
    return torch.randn(CUTS[-1], D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


def _router(group=None, normalize=True):
    torch.manual_seed(3)
    return sparsetopk.SoftTopKRouter(D, E, K, l=L, normalize=normalize, dtype=torch.float64, choice="expert",
                                     group=group)


def _cotangent(gates):
    return torch.linspace(-1, 1, gates.numel(), dtype=gates.dtype).reshape(gates.shape)


def test_capacity():
    assert expert_capacity(2, 8, 2048) == 512
    assert expert_capacity(2, 8, 3) == 1  # at least one token
    assert expert_capacity(8, 8, 5) == 5  # at most every token
    assert expert_capacity(2, 8, 0) == 0


def test_expert_choice_is_a_soft_topk_of_the_tokens_per_expert():
    router = _router(normalize=False)
    x = _tokens().reshape(4, 8, D)  # leading dims are flattened into tokens
    out = router(x)
    assert out.gates.shape == (4, 8, E)
    mask = out.gates.reshape(-1, E)
    capacity = expert_capacity(K, E, 32)
    torch.testing.assert_close(mask.sum(0), torch.full((E,), float(capacity), dtype=torch.float64))
    logits = router.gate(x).reshape(-1, E)
    torch.testing.assert_close(mask, sparsetopk.soft_topk_mask(logits, capacity, L, dim=0))
    assert torch.equal(out.expert_mask, out.gates != 0)
    # normalize: the mask times the softmax over experts, not renormalized
    gates = _router()(x).gates.reshape(-1, E)
    torch.testing.assert_close(gates, mask * torch.softmax(logits, -1))


def test_choice_is_checked():
    with pytest.raises(ValueError, match="choice"):
        sparsetopk.SoftTopKRouter(D, E, K, choice="both")
    with pytest.raises(ValueError, match="group= needs choice='expert'"):
        sparsetopk.SoftTopKRouter(D, E, K, group=object())


def _worker(rank, world):
    router = _router(group=dist.group.WORLD)
    x = _tokens()[CUTS[rank]:CUTS[rank + 1]]
    gates = router(x).gates
    full_v = _cotangent(torch.empty(CUTS[-1], E, dtype=torch.float64))
    (gates * full_v[CUTS[rank]:CUTS[rank + 1]]).sum().backward()
    return gates.detach(), router.gate.weight.grad


def test_group_routing_equals_one_process_on_the_concatenated_tokens():
    parts = _processes.run(_worker, 2)
    router = _router()
    gates = router(_tokens()).gates
    (gates * _cotangent(gates)).sum().backward()
    torch.testing.assert_close(torch.cat([g for g, _ in parts]), gates.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(parts[0][1] + parts[1][1], router.gate.weight.grad, rtol=1e-10, atol=1e-12)
    assert (gates != 0).sum() > 0
