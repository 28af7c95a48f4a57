"""The solvers beyond the core's exact ones: "generic" (the ATen implementation)
on CPU tensors, and "dykstra" (p = 2, Dykstra's alternating projections) with
its num_iter argument: values against the exact core, gradients, errors."""

import pytest
import torch
from torch.autograd import forward_ad

import sparsetopk

ops = torch.ops.sparsetopk
SOFT = [sparsetopk.soft_topk_mask, sparsetopk.soft_topk_mag]
GENERIC_P = [4.0 / 3.0, 2.0, 1.5, 3.0]
ids = lambda f: f.__name__  # noqa: E731


def rows(kind: str) -> torch.Tensor:
    """Random, tied and hostile rows (float64, 6 x 19)."""
    g = torch.Generator().manual_seed({"random": 1, "tied": 2, "hostile": 3}[kind])
    x = torch.randn(6, 19, generator=g, dtype=torch.float64)
    if kind == "tied":  # many ties, ties straddling k, a constant row
        x = torch.floor(x * 2) / 2
        x[0] = 1.5
        x[1, :8] = 2.0
    elif kind == "hostile":  # huge and tiny magnitudes, a large offset, a near-tie one ulp apart
        x[0] *= 1e150
        x[1] *= 1e-150
        x[2] = x[2] * 1e-3 + 1e8
        x[3] = torch.nextafter(torch.ones(19, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64))
        x[3, ::2] = 1.0
        x[4, 3] = 0.0
        x[4, 5] = -0.0
    return x


def scale_of(x: torch.Tensor, magnitude: bool) -> torch.Tensor:
    """Each row's output scale: 1 for the mask, max |x| for the magnitude."""
    return x.abs().amax(-1, keepdim=True) if magnitude else torch.ones(x.shape[0], 1, dtype=x.dtype)


def forward_backward_jvp(op, x, **kwargs):
    """out, the VJP of a fixed cotangent and the JVP of a fixed tangent."""
    g = torch.Generator().manual_seed(9)
    cotangent = torch.randn(x.shape, generator=g, dtype=x.dtype)
    tangent = torch.randn(x.shape, generator=g, dtype=x.dtype)
    xr = x.clone().requires_grad_()
    out = op(xr, **kwargs)
    (vjp,) = torch.autograd.grad(out, xr, cotangent)
    with forward_ad.dual_level():
        jvp = forward_ad.unpack_dual(op(forward_ad.make_dual(x, tangent), **kwargs)).tangent
    return out.detach(), vjp, jvp


# ---- solver "generic" on CPU tensors ----

def active_entries(op, x, **kwargs):
    """The entries of the band (those with a c_i) of the forward pass's row_state
    (RowState: its last four columns bound the band in sorted order, key
    descending and ties by the lower index)."""
    magnitude = op is sparsetopk.soft_topk_mag
    forward = ops._soft_topk_mag_forward if magnitude else ops._soft_topk_mask_forward
    state = forward(x, kwargs["k"], kwargs["l"], kwargs["p"], -1, kwargs.get("solver", "auto"))[1]
    key, column = (x.abs() if magnitude else x), torch.arange(x.shape[-1], dtype=torch.float64)
    first_key, first_index, last_key, last_index = (state[..., i:i + 1] for i in range(3, 7))
    before_first = (key > first_key) | ((key == first_key) & (column < first_index))
    after_last = (key < last_key) | ((key == last_key) & (column > last_index))
    return ~before_first & ~after_last


@pytest.mark.parametrize("op", SOFT, ids=ids)
@pytest.mark.parametrize("p", GENERIC_P)
@pytest.mark.parametrize("kind", ["random", "tied", "hostile"])
def test_generic_solver_on_cpu_matches_the_core(op, p, kind):
    x = rows(kind)
    magnitude = op is sparsetopk.soft_topk_mag
    for k in (1, 5, 18):
        args = dict(k=k, l=0.3 if kind != "hostile" else 1e-3, p=p)
        core = forward_backward_jvp(op, x, **args)
        mine = forward_backward_jvp(op, x, solver="generic", **args)
        error = ((mine[0] - core[0]).abs() / scale_of(x, magnitude)).max()
        assert error <= 1e-9, f"{kind} k={k} out: {error:.3g}"
        # the derivatives, except on a row with an entry at a kink (its output within
        # rounding of 0, 1 or x_i), where either side's one-sided derivative is right
        differs = active_entries(op, x, **args) != active_entries(op, x, solver="generic", **args)
        edge = x.abs() if magnitude else torch.ones_like(x)
        at_kink = torch.minimum(core[0].abs(), (core[0].abs() - edge).abs()) <= 1e-9 * scale_of(x, magnitude)
        assert (at_kink | ~differs).all(), f"{kind} k={k}: blocks differ away from a kink"
        same = ~differs.any(-1)
        for name, a, b in zip(("vjp", "jvp"), mine[1:], core[1:]):
            error = (a - b)[same].abs().max()
            assert error <= 1e-7 * max(1.0, float(b.abs().max())), f"{kind} k={k} {name}: {error:.3g}"


@pytest.mark.parametrize("op", SOFT, ids=ids)
def test_generic_solver_on_cpu_with_dim_and_float32(op):
    x = torch.randn(5, 3, 7, dtype=torch.float32)
    torch.testing.assert_close(op(x, 2, 0.4, 2.0, 1, "generic"), op(x, 2, 0.4, 2.0, 1), rtol=1e-5, atol=1e-6)


# ---- solver "dykstra" ----

def exact(op, x, k, l):
    return op(x, k, l, 2.0)


@pytest.mark.parametrize("op", SOFT, ids=ids)
@pytest.mark.parametrize("n", [64, 1024])
def test_dykstra_default_num_iter_reaches_1e_3_on_normal_rows(op, n):
    x = torch.randn(8, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    error = (op(x, n // 8, 0.3, 2.0, solver="dykstra") - exact(op, x, n // 8, 0.3)).abs().max()
    assert error <= 1e-3


@pytest.mark.parametrize("op", SOFT, ids=ids)
def test_dykstra_error_falls_with_num_iter(op):
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    errors = [(op(x, 32, 0.3, 2.0, solver="dykstra", num_iter=t) - exact(op, x, 32, 0.3)).abs().max()
              for t in (1, 30, 300, 3000)]
    assert all(a >= b for a, b in zip(errors, errors[1:])) and errors[0] > 1e-2 > errors[-1]


@pytest.mark.parametrize("op", SOFT, ids=ids)
@pytest.mark.parametrize("kind", ["random", "tied"])
def test_dykstra_gradients_match_the_exact_ones_once_converged(op, kind):
    x = rows(kind)
    for k in (1, 5, 18):
        converged = forward_backward_jvp(op, x, k=k, l=0.3, p=2.0, solver="dykstra", num_iter=20000)
        reference = forward_backward_jvp(op, x, k=k, l=0.3, p=2.0)
        for a, b in zip(converged, reference):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("op", SOFT, ids=ids)
def test_dykstra_gradients_match_finite_differences(op):
    x = torch.randn(3, 12, generator=torch.Generator().manual_seed(5), dtype=torch.float64).requires_grad_()
    f = lambda t: op(t, 4, 0.5, 2.0, solver="dykstra", num_iter=5000)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6, check_forward_ad=True)


@pytest.mark.parametrize("op", SOFT, ids=ids)
def test_dykstra_gradient_is_the_block_jacobian_of_its_own_solution(op):
    # after 3 iterations the solution is far from exact; its gradient is still the
    # exact block Jacobian of that solution: the _forward op's state, c = 1/l on the block
    x = torch.randn(2, 40, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    forward = torch.ops.sparsetopk._soft_topk_mag_forward if op is sparsetopk.soft_topk_mag \
        else torch.ops.sparsetopk._soft_topk_mask_forward
    out, row_state = forward(x, 5, 0.3, 2.0, -1, "dykstra", 3)
    assert torch.equal(out, op(x, 5, 0.3, 2.0, solver="dykstra", num_iter=3))
    assert row_state.shape == (2, 11) and torch.isfinite(row_state[:, :3]).all()
    xr = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(op(xr, 5, 0.3, 2.0, solver="dykstra", num_iter=3).sum(), xr)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("op", SOFT, ids=ids)
def test_dykstra_float32_any_dim_and_module(op):
    x = torch.randn(6, 4, 9)
    y = op(x, 3, 0.3, 2.0, 1, "dykstra", 100)
    assert y.dtype == torch.float32 and y.shape == x.shape
    torch.testing.assert_close(y, op(x.double(), 3, 0.3, 2.0, 1, "dykstra", 100).float())
    module = (sparsetopk.SoftTopKMagnitude if op is sparsetopk.soft_topk_mag else sparsetopk.SoftTopKMask)(
        3, 0.3, 2.0, 1, "dykstra", 100)
    assert torch.equal(module(x), y)
    assert "num_iter=100" in repr(module)


@pytest.mark.parametrize("op", SOFT, ids=ids)
def test_dykstra_on_meta_tensors(op):
    y = op(torch.empty(3, 8, device="meta"), 2, 0.3, 2.0, solver="dykstra", num_iter=10)
    assert y.is_meta and y.shape == (3, 8)


def test_dykstra_under_vmap():
    x = torch.randn(3, 4, 10, dtype=torch.float64)
    f = lambda t: sparsetopk.soft_topk_mask(t, 3, 0.3, 2.0, solver="dykstra", num_iter=50)  # noqa: E731
    torch.testing.assert_close(torch.func.vmap(f)(x), f(x))
    torch.testing.assert_close(torch.func.vmap(torch.func.grad(lambda t: f(t).pow(2).sum()))(x[0]),
                               torch.stack([torch.func.grad(lambda t: f(t).pow(2).sum())(r) for r in x[0]]))


# ---- errors ----

@pytest.mark.parametrize("op", SOFT, ids=ids)
def test_solver_errors_name_the_argument_and_value(op):
    x = torch.randn(5)
    name = op.__name__
    with pytest.raises(RuntimeError, match=rf'sparsetopk.{name}: solver = "fast" is not one of "auto", "pav", '
                                           r'"threshold", "generic", "dykstra"'):
        op(x, 2, solver="fast")
    with pytest.raises(RuntimeError, match=rf'sparsetopk.{name}: solver = "dykstra" needs p = 2, got p = 1.5'):
        op(x, 2, 0.1, 1.5, solver="dykstra")
    with pytest.raises(RuntimeError, match=r'solver = "dykstra" needs p = 2, got p = 1.33333'):
        op(x, 2, solver="dykstra")
    with pytest.raises(RuntimeError, match=rf'sparsetopk.{name}: num_iter = 5 is for solver = "dykstra" only, '
                                           r'got solver = "auto"'):
        op(x, 2, num_iter=5)
    with pytest.raises(RuntimeError, match=r'num_iter = 5 is for solver = "dykstra" only, got solver = "generic"'):
        op(x, 2, solver="generic", num_iter=5)
    for bad in (0, -3):
        with pytest.raises(RuntimeError, match=rf"sparsetopk.{name}: num_iter must be >= 1, got num_iter = {bad}"):
            op(x, 2, 0.1, 2.0, solver="dykstra", num_iter=bad)


@pytest.mark.parametrize("op", SOFT, ids=ids)
def test_meta_tensors_leave_the_solver_to_the_kernels(op):
    # The fake kernels check shapes and dtypes only: a solver no kernel of the
    # meta device has, or a bad num_iter, passes there; the kernels refuse them.
    y = op(torch.empty(3, 8, device="meta"), 2, solver="pav")
    assert y.is_meta and y.shape == (3, 8)
    y = op(torch.empty(3, 8, device="meta"), 2, 0.3, 2.0, solver="dykstra", num_iter=0)
    assert y.is_meta and y.shape == (3, 8)
    with pytest.raises(RuntimeError, match=rf"sparsetopk.{op.__name__}: num_iter must be >= 1, got num_iter = 0"):
        op(torch.empty(3, 8), 2, 0.3, 2.0, solver="dykstra", num_iter=0)
