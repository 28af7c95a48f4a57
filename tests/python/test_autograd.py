"""First derivatives of the soft operators: gradcheck, the core's VJP, modes and errors."""

import pytest
import torch
from torch.autograd import gradcheck

import sparsetopk
from conftest import P_VALUES, separated

SOFT = [sparsetopk.soft_topk_mask, sparsetopk.soft_topk_mag]
SHAPES_DIMS = [((6,), -1), ((3, 7), -1), ((7, 3), 0), ((2, 6, 3), 1), ((2, 3, 5), 2)]


def nonzero_jacobian(op, x, *args, **kwargs):
    """True if the Jacobian at x has an off-diagonal entry (an active block with >= 2 entries)."""
    jac = torch.autograd.functional.jacobian(lambda t: op(t.reshape(x.shape), *args, **kwargs).reshape(-1),
                                             x.reshape(-1))
    return (jac - torch.diag(torch.diagonal(jac))).abs().max() > 1e-6


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("shape,dim", SHAPES_DIMS)
@pytest.mark.parametrize("solver", ["auto", "pav"])
def test_gradcheck_soft_mask(p, shape, dim, solver):
    x = separated(shape, dim, spacing=0.3, seed=len(shape) + dim).requires_grad_()
    k = max(1, x.shape[dim] // 2)
    assert nonzero_jacobian(sparsetopk.soft_topk_mask, x.detach(), k, 0.8, p, dim)
    assert gradcheck(lambda t: sparsetopk.soft_topk_mask(t, k, 0.8, p, dim, solver), (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("shape,dim", SHAPES_DIMS)
@pytest.mark.parametrize("solver", ["auto", "pav"])
def test_gradcheck_soft_mag(p, shape, dim, solver):
    x = separated(shape, dim, spacing=0.3, seed=7 + len(shape) + dim, magnitude=True).requires_grad_()
    k = max(1, x.shape[dim] // 2)
    assert nonzero_jacobian(sparsetopk.soft_topk_mag, x.detach(), k, 0.8, p, dim)
    assert gradcheck(lambda t: sparsetopk.soft_topk_mag(t, k, 0.8, p, dim, solver), (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("op", SOFT)
def test_gradcheck_random_normal_inputs(seed, op):
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(4, 8, generator=g, dtype=torch.float64).requires_grad_()
    assert gradcheck(lambda t: op(t, 3, 1.0), (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode,op", [("mask", sparsetopk.soft_topk_mask), ("mag", sparsetopk.soft_topk_mag)])
@pytest.mark.parametrize("p", P_VALUES)
def test_vjp_agrees_with_the_cli(cli, mode, op, p):
    x = (torch.randn(5, 9, dtype=torch.float64) * 2).requires_grad_()
    g = torch.randn(5, 9, dtype=torch.float64)
    (grad,) = torch.autograd.grad(op(x, 3, 1.0, p), x, g)
    torch.testing.assert_close(grad, cli(mode, x.detach(), 3, 1.0, p, vjp_rows=g), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("op", SOFT)
def test_gradient_with_dim_and_non_contiguous_input(op):
    base = torch.randn(6, 5, dtype=torch.float64)
    x = base.t().requires_grad_()  # non-contiguous leaf, rows along dim 0 of base
    g = torch.randn(5, 6, dtype=torch.float64)
    (grad,) = torch.autograd.grad(op(x, 2, 0.7, dim=1), x, g)
    x2 = base.t().contiguous().requires_grad_()
    (expected,) = torch.autograd.grad(op(x2, 2, 0.7, dim=1), x2, g)
    assert torch.equal(grad, expected)
    x3 = base.clone().requires_grad_()
    (transposed,) = torch.autograd.grad(op(x3, 2, 0.7, dim=0), x3, g.t())
    assert torch.equal(transposed.t(), expected)


@pytest.mark.parametrize("op", SOFT)
def test_backward_twice_with_retain_graph(op):
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    y = op(x, 2, 1.0)
    y.backward(torch.ones_like(y), retain_graph=True)
    first = x.grad.clone()
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, 2 * first)


@pytest.mark.parametrize("op", SOFT)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gradient_dtypes(op, dtype):
    x64 = separated((3, 6), spacing=0.5, seed=3, magnitude=op is sparsetopk.soft_topk_mag)
    x = x64.to(dtype).requires_grad_()
    g = torch.randn(3, 6).to(dtype)
    (grad,) = torch.autograd.grad(op(x, 2, 1.0), x, g)
    assert grad.dtype == dtype
    xf = x.detach().float().requires_grad_()
    (expected,) = torch.autograd.grad(op(xf, 2, 1.0), xf, g.float())
    torch.testing.assert_close(grad, expected.to(dtype))


@pytest.mark.parametrize("op", SOFT)
def test_gradient_of_empty_tensor(op):
    x = torch.empty(0, 4, requires_grad=True)
    op(x, 2).sum().backward()
    assert x.grad.shape == (0, 4)


@pytest.mark.parametrize("op", SOFT)
def test_double_backward_raises(op):
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    y = op(x, 2, 1.0)
    (grad,) = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"sparsetopk\.soft_topk_ma[sg]k?: second derivatives are not implemented"):
        grad.sum().backward()
    (grad,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"sparsetopk\.soft_topk_ma[sg]k?: second derivatives are not implemented"):
        torch.autograd.grad(grad.sum(), x)
    with pytest.raises(RuntimeError, match=r"sparsetopk\.soft_topk_ma[sg]k?: second derivatives are not implemented"):
        torch.autograd.gradgradcheck(lambda t: op(t, 2, 1.0), (x,))


def test_hard_mask_is_not_differentiable():
    x = torch.randn(3, 5, requires_grad=True)
    assert not sparsetopk.hard_topk_mask(x, 2).requires_grad


def test_hard_mag_gradient_is_the_mask():
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 7, dtype=torch.float64)
    (grad,) = torch.autograd.grad(sparsetopk.hard_topk_mag(x, 3, dim=1), x, g)
    assert torch.equal(grad, g * sparsetopk.hard_topk_mask(x.detach().abs(), 3))
    assert gradcheck(lambda t: sparsetopk.hard_topk_mag(t, 3, 0), (x,))
    assert torch.autograd.gradgradcheck(lambda t: sparsetopk.hard_topk_mag(t, 3, 0), (x,))


def test_gradient_flows_only_through_the_active_block():
    # mask: saturated and zero entries get no gradient; the block's gradient sums to 0
    x = torch.tensor([3.0, 1.0, 0.95, -4.0], dtype=torch.float64, requires_grad=True)
    y = sparsetopk.soft_topk_mask(x, 2, 0.5, 2.0)
    assert y[0] == 1 and y[3] == 0
    g = torch.tensor([1.0, 2.0, -1.0, 5.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad(y, x, g)
    assert grad[0] == 0 and grad[3] == 0
    torch.testing.assert_close(grad.sum(), torch.tensor(0.0, dtype=torch.float64), atol=1e-12, rtol=0)
    # magnitude: an entry returned unchanged has derivative exactly 1
    x = torch.tensor([-6.0, 1.0, 0.9, 0.1], dtype=torch.float64, requires_grad=True)
    y = sparsetopk.soft_topk_mag(x, 2, 0.5)
    assert y[0] == -6
    (grad,) = torch.autograd.grad(y, x, torch.tensor([1.0, 0, 0, 0], dtype=torch.float64))
    assert grad.tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("op", SOFT)
def test_expanded_and_strided_incoming_gradients(op):
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    (from_sum,) = torch.autograd.grad(op(x, 2, 1.0).sum(), x)  # the incoming gradient is an expanded scalar
    (from_ones,) = torch.autograd.grad(op(x, 2, 1.0), x, torch.ones(4, 6, dtype=torch.float64))
    assert torch.equal(from_sum, from_ones)
    g = torch.randn(6, 4, dtype=torch.float64)
    (from_strided,) = torch.autograd.grad(op(x, 2, 1.0), x, g.t())
    (from_contiguous,) = torch.autograd.grad(op(x, 2, 1.0), x, g.t().contiguous())
    assert torch.equal(from_strided, from_contiguous)
