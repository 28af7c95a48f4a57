"""topk_sum, topk_loss and TopKLoss (SPEC.md, "Smoothed top-k sum", "Top-k loss")
against an independent computation (bisection on the threshold in float64,
the sparsemax loss's sorting formula, finite differences), and through opcheck,
torch.compile and torch.func."""

import math

import pytest
import torch

import sparsetopk
from sparsetopk import topk_loss, topk_sum

ops = torch.ops.sparsetopk


def bisection_mask(x, k, l, p):
    """The soft mask of one row: clip((x - tau)/l, 0, 1)^(q-1) with tau by bisection."""
    x = x.double()
    q_minus_1 = 1.0 / (p - 1.0)
    if k == 0:
        return torch.zeros_like(x)
    lo, hi = x.min().item() - 2 * l, x.max().item()
    for _ in range(200):
        mid = (lo + hi) / 2
        if ((x - mid) / l).clamp(0, 1).pow(q_minus_1).sum().item() > k:
            lo = mid
        else:
            hi = mid
    # The end of the bracket whose mask sums nearer k: where the sum is k on a whole
    # interval of tau, its end (the midpoint would give an entry a spurious (1e-16/l)^(q-1)).
    ends = [((x - tau) / l).clamp(0, 1).pow(q_minus_1) for tau in (lo, hi)]
    return min(ends, key=lambda m: abs(m.sum().item() - k))


def reference_sum(x, k, l, p):
    m = bisection_mask(x, k, l, p)
    return (m * x.double()).sum().item() - l / p * m.pow(p).sum().item()


def reference_loss(x, t, k, l, p):
    rest = torch.cat([x[:t], x[t + 1:]])
    return reference_sum(x, k, l, p) - x[t].item() - reference_sum(rest, k - 1, l, p) + l / p


CASES = [(0.1, 4.0 / 3.0), (0.5, 2.0), (0.3, 1.5), (1.0, 3.0)]


@pytest.mark.parametrize("l,p", CASES)
def test_topk_sum_matches_the_bisection_reference_and_its_bounds(l, p):
    torch.manual_seed(0)
    x = torch.randn(6, 9, dtype=torch.float64)
    for k in range(10):
        value = topk_sum(x, k, l, p)
        assert value.shape == (6,)
        hard = x.topk(k, dim=-1).values.sum(-1)
        for r in range(6):
            assert value[r].item() == pytest.approx(reference_sum(x[r], k, l, p), abs=1e-10)
        assert (value <= hard + 1e-12).all() and (value >= hard - l / p * k - 1e-12).all()


def test_topk_sum_along_a_dim_in_float32_and_its_gradient_is_the_mask():
    torch.manual_seed(1)
    x = torch.randn(4, 7, 3, requires_grad=True)
    value = topk_sum(x, 3, 0.5, 4.0 / 3.0, dim=1)
    assert value.shape == (4, 3) and value.dtype == torch.float32
    value.sum().backward()
    mask = sparsetopk.soft_topk_mask(x.detach(), 3, 0.5, 4.0 / 3.0, dim=1)
    assert torch.equal(x.grad, mask)


@pytest.mark.parametrize("l,p", CASES)
def test_topk_sum_first_and_second_derivatives_match_finite_differences(l, p):
    torch.manual_seed(2)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: topk_sum(t, 2, l, p), (x,))
    assert torch.autograd.gradgradcheck(lambda t: topk_sum(t, 2, l, p), (x,))


def test_topk_sum_hessian_is_the_mask_jacobian_under_torch_func():
    torch.manual_seed(3)
    x = torch.randn(8, dtype=torch.float64)
    f = lambda t: topk_sum(t, 3, 1.0, 4.0 / 3.0)  # noqa: E731
    hessian = torch.func.hessian(f)(x)  # forward over reverse
    assert torch.allclose(torch.func.jacrev(torch.func.jacrev(f))(x), hessian, atol=1e-12)
    jacobian = torch.func.jacrev(lambda t: sparsetopk.soft_topk_mask(t, 3, 1.0, 4.0 / 3.0))(x)
    assert torch.allclose(hessian, jacobian, atol=1e-12) and hessian.abs().sum() > 0


@pytest.mark.parametrize("l,p", CASES)
def test_topk_loss_matches_the_definition_and_is_zero_exactly_when_the_label_is_selected(l, p):
    torch.manual_seed(4)
    x = torch.randn(5, 6, dtype=torch.float64)
    zero = positive = 0
    for k in range(1, 7):
        mask = sparsetopk.soft_topk_mask(x, k, l, p)
        for t in range(6):
            target = torch.full((5,), t, dtype=torch.int64)
            losses = topk_loss(x, target, k, l, p, reduction="none")
            for r in range(5):
                assert losses[r].item() == pytest.approx(reference_loss(x[r], t, k, l, p), abs=1e-10)
                if mask[r, t] == 1:
                    zero += 1
                    assert losses[r].item() == 0.0
                else:
                    positive += 1
                    assert losses[r].item() > 0.0
    assert zero > 10 and positive > 10


def test_topk_loss_gradient_is_sparse_sums_to_zero_and_matches_finite_differences():
    torch.manual_seed(5)
    x = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 3, 9, 5])
    assert torch.autograd.gradcheck(lambda t: topk_loss(t, target, 3, 0.5, 4.0 / 3.0, reduction="none"), (x,))
    topk_loss(x, target, 3, 0.1, 4.0 / 3.0, reduction="sum").backward()
    assert torch.allclose(x.grad.sum(-1), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert (x.grad == 0).sum() > 10  # sparse
    with pytest.raises(RuntimeError, match="second derivatives"):
        g, = torch.autograd.grad(topk_loss(x, target, 3), x, create_graph=True)
        g.sum().backward()


def sparsemax_loss(x, t, l):
    """Martins and Astudillo (2016), temperature l: l (-z_t + (1/2) sum_{S} (z_j^2 - tau^2) + 1/2), z = x / l."""
    z = x.double() / l
    s, _ = z.sort(descending=True)
    cumulative = s.cumsum(0)
    ks = torch.arange(1, len(z) + 1, dtype=torch.float64)
    support = int((1 + ks * s > cumulative).sum())
    tau = (cumulative[support - 1] - 1) / support
    inside = z > tau
    return l * (-z[t] + 0.5 * (z[inside].pow(2) - tau ** 2).sum() + 0.5).item()


def test_topk_loss_with_k_one_and_p_two_is_the_sparsemax_loss():
    torch.manual_seed(6)
    x = torch.randn(7, 12, dtype=torch.float64)
    target = torch.randint(0, 12, (7,))
    for l in (0.1, 1.0, 4.0):
        losses = topk_loss(x, target, 1, l, 2.0, reduction="none")
        for r in range(7):
            assert losses[r].item() == pytest.approx(sparsemax_loss(x[r], target[r], l), abs=1e-12)


def test_topk_loss_reductions_dims_and_the_module():
    torch.manual_seed(7)
    scores = torch.randn(3, 5, 4)  # classes along dim 1
    target = torch.randint(0, 5, (3, 4))
    losses = topk_loss(scores, target, 2, dim=1, reduction="none")
    assert losses.shape == (3, 4) and losses.dtype == torch.float32
    assert torch.allclose(topk_loss(scores, target, 2, dim=1), losses.mean())
    assert torch.allclose(topk_loss(scores, target, 2, dim=1, reduction="sum"), losses.sum())
    moved = topk_loss(scores.movedim(1, -1), target, 2, reduction="none")
    assert torch.equal(moved, losses)
    module = sparsetopk.TopKLoss(2, reduction="sum", dim=1)
    assert torch.equal(module(scores, target), topk_loss(scores, target, 2, dim=1, reduction="sum"))
    assert "k=2" in repr(module)
    assert topk_loss(torch.randn(3, 4), torch.tensor([0, 1, 2]), 4).item() == 0.0  # k = n: identically 0


def test_bad_arguments_are_named():
    scores = torch.randn(2, 4)
    with pytest.raises(RuntimeError, match=r"sparsetopk.topk_loss: target = 4 is out of range \[0, n = 4\) "
                                           r"\(at target\[1\]\)"):
        topk_loss(scores, torch.tensor([0, 4]), 2)
    with pytest.raises(RuntimeError, match=r"target = -1 is out of range"):
        topk_loss(scores, torch.tensor([-1, 0]), 2)
    with pytest.raises(RuntimeError, match=r"k = 0 is out of range \[1, n = 4\]"):
        topk_loss(scores, torch.tensor([0, 1]), 0)
    with pytest.raises(RuntimeError, match=r"target must be int64 \(class indices\), got int32"):
        topk_loss(scores, torch.tensor([0, 1], dtype=torch.int32), 2)
    with pytest.raises(RuntimeError, match=r"target has shape \[3\] but scores of shape \[2, 4\]"):
        topk_loss(scores, torch.tensor([0, 1, 2]), 2)
    with pytest.raises(ValueError, match=r"reduction = 'avg' is not one of"):
        topk_loss(scores, torch.tensor([0, 1]), 2, reduction="avg")
    with pytest.raises(RuntimeError, match=r"sparsetopk.topk_sum: k = 5 is out of range \[0, n = 4\]"):
        topk_sum(scores, 5)
    with pytest.raises(RuntimeError, match=r"sparsetopk.topk_sum: l must be finite and > 0, got l = 0"):
        topk_sum(scores, 2, 0.0)
    with pytest.raises(ValueError, match=r"TopKLoss: k must be >= 1"):
        sparsetopk.TopKLoss(0)


def test_empty_and_non_finite_slices():
    assert torch.equal(topk_sum(torch.zeros(3, 0), 0), torch.zeros(3))
    x = torch.tensor([[1.0, float("nan"), 0.0], [1.0, 2.0, 3.0]])
    assert torch.isnan(topk_sum(x, 1)[0]) and not torch.isnan(topk_sum(x, 1)[1])
    assert torch.isnan(topk_loss(x, torch.tensor([0, 0]), 1, reduction="none")[0])


def opcheck_cases():
    torch.manual_seed(8)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    x32 = torch.randn(4, 5, 2)
    target = torch.tensor([0, 5, 2])
    return [("topk_sum", (x, 2, 0.5, 4.0 / 3.0, -1)), ("topk_sum", (x32, 3, 0.3, 2.0, 1)),
            ("_topk_sum_forward", (x.detach(), 2, 0.5, 1.5, 0)),
            ("topk_loss", (x, target, 2, 0.5, 4.0 / 3.0, -1)),
            ("topk_loss", (x32, torch.randint(0, 5, (4, 2)), 1, 0.3, 2.0, 1)),
            ("_topk_loss_forward", (x.detach(), target, 3, 0.5, 3.0, -1))]


@pytest.mark.parametrize("name,args", opcheck_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    results = torch.library.opcheck(getattr(ops, name).default, args)
    assert all(v == "SUCCESS" for v in results.values()), results


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_matches_eager(backend):
    torch.manual_seed(9)
    scores = torch.randn(6, 10, requires_grad=True)
    target = torch.randint(0, 10, (6,))

    def fn(s):
        return topk_loss(s * 2.0, target, 3) + topk_sum(s, 2).mean()

    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    eager_value = fn(scores)
    eager_grad, = torch.autograd.grad(eager_value, scores)
    value = compiled(scores)
    grad, = torch.autograd.grad(value, scores)
    assert torch.allclose(value, eager_value) and torch.allclose(grad, eager_grad)


def test_torch_func_grad_vmap_and_jvp():
    torch.manual_seed(10)
    scores = torch.randn(5, 8, dtype=torch.float64)
    target = torch.randint(0, 8, (5,))
    grads = torch.func.vmap(torch.func.grad(lambda s, t: topk_loss(s, t, 2, 0.5)))(scores, target)
    eager = scores.clone().requires_grad_()
    topk_loss(eager, target, 2, 0.5, reduction="sum").backward()
    assert torch.allclose(grads, eager.grad)
    tangent = torch.randn_like(scores)
    _, value_tangent = torch.func.jvp(lambda s: topk_sum(s, 3, 0.5), (scores,), (tangent,))
    mask = sparsetopk.soft_topk_mask(scores, 3, 0.5)
    assert torch.allclose(value_tangent, (mask * tangent).sum(-1))
    batched = torch.func.vmap(lambda s: topk_sum(s, 3, 0.5))(scores)
    assert torch.equal(batched, topk_sum(scores, 3, 0.5))
    _, loss_tangent = torch.func.jvp(lambda s: topk_loss(s, target, 2, 0.5, reduction="none"), (scores,), (tangent,))
    assert torch.allclose(loss_tangent, (eager.grad * tangent).sum(-1))
