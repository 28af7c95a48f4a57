"""Values, shapes, dtypes and errors of torch.ops.sparsetopk.* and the functions."""

import pytest
import torch

import sparsetopk
from conftest import P_VALUES, separated

SOFT = [sparsetopk.soft_topk_mask, sparsetopk.soft_topk_mag]
HARD = [sparsetopk.hard_topk_mask, sparsetopk.hard_topk_mag]
ALL = SOFT + HARD
SPEC_X = [-5.0, -2.0, 3.0, 1.0]


def call(op, x, k, dim=-1):
    """Calls a soft op with l = 0.5, a hard op as is."""
    if op in SOFT:
        return op(x, k, 0.5, dim=dim)
    return op(x, k, dim=dim)


# ---- values ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spec_known_values(dtype):
    x = torch.tensor(SPEC_X, dtype=dtype)
    tol = dict(rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)
    torch.testing.assert_close(sparsetopk.soft_topk_mask(x, 2, 0.01), torch.tensor([0.0, 0, 1, 1], dtype=dtype), **tol)
    torch.testing.assert_close(sparsetopk.soft_topk_mag(x, 2, 0.01), torch.tensor([-5.0, 0, 3, 0], dtype=dtype), **tol)
    assert sparsetopk.hard_topk_mask(x, 2).tolist() == [0, 0, 1, 1]
    assert sparsetopk.hard_topk_mag(x, 2).tolist() == [-5, 0, 3, 0]


def test_ops_and_functions_agree():
    x = torch.randn(4, 7, dtype=torch.float64)
    assert torch.equal(torch.ops.sparsetopk.soft_topk_mask(x, 3), sparsetopk.soft_topk_mask(x, 3))
    assert torch.equal(torch.ops.sparsetopk.soft_topk_mag(x, 3, 0.2, 2.0, 0, "pav"),
                       sparsetopk.soft_topk_mag(x, 3, l=0.2, p=2.0, dim=0, solver="pav"))
    assert torch.equal(torch.ops.sparsetopk.hard_topk_mask(x, 2, 0), sparsetopk.hard_topk_mask(x, 2, dim=0))


def test_default_arguments_follow_the_spec():
    x = torch.randn(3, 6, dtype=torch.float64)
    assert torch.equal(sparsetopk.soft_topk_mask(x, 2), sparsetopk.soft_topk_mask(x, 2, 0.1, 4.0 / 3.0, -1, "auto"))
    assert torch.equal(torch.ops.sparsetopk.soft_topk_mag(x, 2), sparsetopk.soft_topk_mag(x, 2, 0.1, 4.0 / 3.0))


@pytest.mark.parametrize("p", P_VALUES)
def test_soft_mask_properties(p):
    x = torch.randn(50, 9, dtype=torch.float64)
    y = sparsetopk.soft_topk_mask(x, 3, 0.5, p)
    torch.testing.assert_close(y.sum(-1), torch.full((50,), 3.0, dtype=torch.float64))
    assert (y >= 0).all() and (y <= 1).all()
    assert (y == 0).any()  # sparse


@pytest.mark.parametrize("mode", ["mask", "mag"])
@pytest.mark.parametrize("p", P_VALUES)
def test_agrees_with_the_cli(cli, mode, p):
    x = torch.randn(6, 9, dtype=torch.float64) * 2
    op = sparsetopk.soft_topk_mask if mode == "mask" else sparsetopk.soft_topk_mag
    torch.testing.assert_close(op(x, 3, 0.7, p), cli(mode, x, 3, 0.7, p), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("mode,op", [("hard-mask", sparsetopk.hard_topk_mask), ("hard-mag", sparsetopk.hard_topk_mag)])
def test_hard_agrees_with_the_cli(cli, mode, op):
    x = torch.randn(5, 8, dtype=torch.float64)
    torch.testing.assert_close(op(x, 3), cli(mode, x, 3), rtol=1e-8, atol=0)


@pytest.mark.parametrize("op", SOFT)
@pytest.mark.parametrize("p", P_VALUES)
def test_solvers_agree(op, p):
    x = torch.randn(20, 11, dtype=torch.float64)
    reference = op(x, 4, 0.3, p, solver="pav")
    for solver in ["auto", "threshold"]:
        torch.testing.assert_close(op(x, 4, 0.3, p, solver=solver), reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", SOFT)
def test_float32_matches_float64(op):
    x = torch.randn(10, 12, dtype=torch.float64)
    torch.testing.assert_close(op(x.float(), 4, 0.5), op(x, 4, 0.5).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", SOFT)
def test_small_l_tends_to_the_hard_operator(op):
    x = separated((5, 8), spacing=1.0)
    hard = sparsetopk.hard_topk_mask(x, 3) if op is sparsetopk.soft_topk_mask else sparsetopk.hard_topk_mag(x, 3)
    torch.testing.assert_close(op(x, 3, 1e-3), hard, rtol=0, atol=1e-6)


def test_hard_ties_lower_index_first():
    x = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0]])
    assert sparsetopk.hard_topk_mask(x, 2).tolist() == [[0, 1, 1, 0, 0]]
    assert sparsetopk.hard_topk_mag(torch.tensor([-2.0, 2.0, 1.0]), 1).tolist() == [-2, 0, 0]


# ---- shapes, dims, layouts ----

@pytest.mark.parametrize("op", ALL)
@pytest.mark.parametrize("shape,dim", [((7,), 0), ((3, 7), 1), ((7, 3), 0), ((2, 7, 3), 1), ((2, 3, 7), -1),
                                       ((7, 2, 3), -3)])
def test_any_dim_equals_moving_dim_last(op, shape, dim):
    x = torch.randn(shape, dtype=torch.float64)
    expected = call(op, x.movedim(dim, -1).contiguous(), 3).movedim(-1, dim)
    out = call(op, x, 3, dim)
    assert out.shape == x.shape and out.is_contiguous()
    assert torch.equal(out, expected)


@pytest.mark.parametrize("op", ALL)
def test_rows_are_independent(op):
    x = torch.randn(6, 9, dtype=torch.float64)
    batch = call(op, x, 4)
    for r in range(6):
        assert torch.equal(batch[r], call(op, x[r], 4))


@pytest.mark.parametrize("op", ALL)
def test_non_contiguous_inputs(op):
    base = torch.randn(8, 10, dtype=torch.float64)
    for x in [base.t(), base[:, ::2], base[1::3], base.expand(2, 8, 10)[1]]:
        assert torch.equal(call(op, x, 2), call(op, x.contiguous(), 2))


@pytest.mark.parametrize("op", ALL)
@pytest.mark.parametrize("shape,dim,k", [((0,), -1, 0), ((0, 5), -1, 2), ((5, 0), -1, 0), ((5, 0), 0, 3),
                                         ((2, 0, 3), 1, 0)])
def test_empty_tensors(op, shape, dim, k):
    x = torch.empty(shape, dtype=torch.float32)
    out = call(op, x, k, dim)
    assert out.shape == x.shape and out.dtype == x.dtype


@pytest.mark.parametrize("op", ALL)
def test_zero_dim_tensor_is_one_entry(op):
    x = torch.tensor(-2.0)
    assert call(op, x, 1).shape == ()
    assert call(op, x, 0).item() == 0
    assert call(op, x, 1, dim=0).item() == (1.0 if op in (sparsetopk.soft_topk_mask, sparsetopk.hard_topk_mask)
                                             else -2.0)


@pytest.mark.parametrize("op", ALL)
def test_k_zero_and_k_n(op):
    x = torch.randn(4, 5, dtype=torch.float64)
    assert torch.equal(call(op, x, 0), torch.zeros_like(x))
    expected = torch.ones_like(x) if op in (sparsetopk.soft_topk_mask, sparsetopk.hard_topk_mask) else x
    torch.testing.assert_close(call(op, x, 5), expected)


# ---- dtypes ----

@pytest.mark.parametrize("op", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_dtype_is_preserved(op, dtype):
    x = torch.randn(4, 6).to(dtype)
    out = call(op, x, 2)
    assert out.dtype == dtype
    if dtype in (torch.float16, torch.bfloat16):
        # computed in float32 from the same (rounded) values
        assert torch.equal(out, call(op, x.float(), 2).to(dtype))


# ---- parallel batches are deterministic ----

@pytest.mark.parametrize("op", SOFT)
def test_large_batches_are_deterministic(op):
    x = torch.randn(3000, 64, dtype=torch.float32)
    first = op(x, 8, 0.2)
    assert torch.equal(first, op(x, 8, 0.2))
    assert torch.equal(first[1234], op(x[1234], 8, 0.2))


# ---- modes ----

@pytest.mark.parametrize("op", ALL)
def test_no_grad(op):
    x = torch.randn(3, 5, requires_grad=True)
    with torch.no_grad():
        out = call(op, x, 2)
    assert not out.requires_grad and out.grad_fn is None


@pytest.mark.parametrize("op", ALL)
def test_inference_mode(op):
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    expected = call(op, x.detach(), 2)
    with torch.inference_mode():
        out = call(op, x, 2)
        assert torch.equal(call(op, torch.ones(2, 5), 1), call(op, torch.ones(2, 5), 1))
    assert out.is_inference() and not out.requires_grad
    assert torch.equal(out, expected)


def test_torchscript_function_calling_the_op():
    @torch.jit.script
    def scripted(x: torch.Tensor, k: int) -> torch.Tensor:
        return torch.ops.sparsetopk.soft_topk_mask(x, k) + torch.ops.sparsetopk.hard_topk_mag(x, k, dim=0)

    x = torch.randn(4, 4, dtype=torch.float64)
    expected = sparsetopk.soft_topk_mask(x, 2) + sparsetopk.hard_topk_mag(x, 2, dim=0)
    assert torch.equal(scripted(x, 2), expected)
    assert "sparsetopk::soft_topk_mask" in str(scripted.graph)


def test_torchscript_python_functions_and_gradients():
    scripted = torch.jit.script(sparsetopk.soft_topk_mag)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    y = scripted(x, 2, 0.5, 2.0, -1, "pav")
    assert torch.equal(y, sparsetopk.soft_topk_mag(x, 2, 0.5, 2.0, solver="pav"))
    (g,) = torch.autograd.grad(y.sum(), x)
    (expected,) = torch.autograd.grad(sparsetopk.soft_topk_mag(x, 2, 0.5, 2.0).sum(), x)
    assert torch.equal(g, expected)


def test_torchscript_save_and_load(tmp_path):
    module = torch.jit.script(sparsetopk.SoftTopKMask(2, l=0.01))
    path = tmp_path / "mask.pt"
    module.save(str(path))
    loaded = torch.jit.load(str(path))
    assert loaded(torch.tensor([-5.0, -2.0, 3.0, 1.0])).tolist() == [0, 0, 1, 1]


# ---- errors ----

@pytest.mark.parametrize("op", ALL)
def test_error_k_out_of_range(op):
    x = torch.randn(2, 5)
    with pytest.raises(RuntimeError, match=r"k = 6 is out of range \[0, n = 5\] \(n = x.size\(1\)\)"):
        call(op, x, 6)
    with pytest.raises(RuntimeError, match=r"k = -1 is out of range \[0, n = 2\] \(n = x.size\(0\)\)"):
        call(op, x, -1, dim=0)


@pytest.mark.parametrize("op", ALL)
def test_error_bad_dim(op):
    with pytest.raises(IndexError, match=r"dim = 2 is out of range for x with 2 dimension\(s\) "
                                         r"\(expected a value in \[-2, 1\]\)"):
        call(op, torch.randn(2, 5), 1, dim=2)
    with pytest.raises(IndexError, match=r"dim = -3 is out of range"):
        call(op, torch.randn(2, 5), 1, dim=-3)


@pytest.mark.parametrize("op", SOFT)
def test_error_bad_l_p_solver(op):
    x = torch.randn(5)
    name = op.__name__
    with pytest.raises(RuntimeError, match=rf"sparsetopk.{name}: l must be finite and > 0, got l = 0"):
        op(x, 2, 0.0)
    with pytest.raises(RuntimeError, match=r"l must be finite and > 0, got l = -1"):
        op(x, 2, -1.0)
    with pytest.raises(RuntimeError, match=r"l must be finite and > 0, got l = nan"):
        op(x, 2, float("nan"))
    with pytest.raises(RuntimeError, match=rf"sparsetopk.{name}: p must be finite and > 1, got p = 1"):
        op(x, 2, 0.1, 1.0)
    with pytest.raises(RuntimeError, match=r"p must be finite and > 1, got p = 0.5"):
        op(x, 2, 0.1, 0.5)
    with pytest.raises(RuntimeError, match=r'solver = "fast" is not one of "auto", "pav", "threshold"'):
        op(x, 2, solver="fast")


@pytest.mark.parametrize("op", ALL)
@pytest.mark.parametrize("dtype,name", [(torch.int64, "int64"), (torch.int32, "int32"), (torch.bool, "bool"),
                                        (torch.complex64, "complex64")])
def test_error_non_floating_dtype(op, dtype, name):
    with pytest.raises(RuntimeError, match=rf"x must be float32, float64, float16 or bfloat16, got {name}"):
        call(op, torch.zeros(5, dtype=dtype), 2)


@pytest.mark.parametrize("op", ALL)
def test_meta_tensors_give_meta_results_of_the_right_shape(op):
    # The fake kernels (sparsetopk/_registration.py) serve the meta device: shapes and dtypes, no data.
    x = torch.zeros(3, 5, device="meta", dtype=torch.float16)
    out = call(op, x, 2)
    assert out.device.type == "meta" and out.shape == x.shape and out.dtype == torch.float16
    with pytest.raises(RuntimeError, match=rf"sparsetopk.{op.__name__}: x must be float32, float64, float16 or "
                                           "bfloat16, got int64"):
        call(op, torch.zeros(3, 5, device="meta", dtype=torch.int64), 2)
    with pytest.raises(IndexError, match=rf"sparsetopk.{op.__name__}: dim = 2 is out of range for x with 2 "
                                         r"dimension\(s\)"):
        call(op, x, 2, dim=2)


@pytest.mark.parametrize("op", ALL)
def test_meta_tensors_leave_k_to_the_kernels(op):
    # The fake kernels check shapes and dtypes only: the argument checks are the C++
    # kernels', which meta tensors never reach (the real tensors of the same call do).
    out = call(op, torch.zeros(3, 5, device="meta"), 6)
    assert out.device.type == "meta" and out.shape == (3, 5)
    with pytest.raises(RuntimeError, match=rf"sparsetopk.{op.__name__}: k = 6 is out of range \[0, n = 5\]"):
        call(op, torch.zeros(3, 5), 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
@pytest.mark.parametrize("op", SOFT)
def test_error_cpu_only_solver_names_the_device(op):
    x = torch.zeros(5, device="cuda")
    with pytest.raises(RuntimeError, match=rf'sparsetopk.{op.__name__}: solver = "pav" runs on CPU tensors only; x is on cuda'):
        op(x, 2, solver="pav")


@pytest.mark.parametrize("op", ALL)
def test_error_sparse_layout(op):
    with pytest.raises(RuntimeError, match=r"x must be a dense \(strided\) tensor, got layout Sparse"):
        call(op, torch.randn(5).to_sparse(), 2)


def test_non_finite_rows_give_nan_rows():
    x = torch.tensor([[1.0, float("nan"), 2.0], [1.0, 3.0, 2.0]])
    for op in SOFT:
        out = op(x, 1, 0.1)
        assert torch.isnan(out[0]).all() and not torch.isnan(out[1]).any()


def test_flush_denormal_mode_gives_the_same_results_and_is_restored():
    # torch.set_flush_denormal(True) sets FTZ/DAZ on this thread; the core used
    # to crash on this row under it (tests/core/test_robustness.cpp).
    x = torch.tensor([[0.0, -1.0, 0.0, 0.0, 0.0, 0.0], [1e-310, -2e-308, 0.5, 0.0, -1.0, 3e-320]],
                     dtype=torch.float64)
    expected = [op(x, 2, 1e-3) for op in SOFT]
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-denormal mode")
    try:
        got = [op(x, 2, 1e-3) for op in SOFT]
        assert (torch.tensor([1e-310], dtype=torch.float64) * 1).item() == 0.0  # the caller's mode is back
    finally:
        torch.set_flush_denormal(False)
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_results_do_not_depend_on_torch_threads(dtype):
    # Batches this big run in parts on torch's intra-op threads
    # (src/torch/cpu/topk_kernel.cpp, for_row_parts): every output, saved
    # state and derivative must be the same bits as one part on one thread.
    torch.manual_seed(0)
    x = torch.randn(301, 67, dtype=dtype)  # 20167 entries: uneven parts
    w = torch.randn(301, 67, dtype=dtype)
    ops = torch.ops.sparsetopk

    def run():
        results = []
        for op in SOFT:
            for p in (4.0 / 3.0, 2.0, 3.0):
                xg = x.clone().requires_grad_()
                out = op(xg, 5, 0.3, p)
                results += [out, torch.autograd.grad((out * w).sum(), xg)[0]]
            results.append(op(x.t(), 4, 0.2, dim=0))
        forward = ops._soft_topk_mask_forward(x, 5, 0.3, 4.0 / 3.0, -1, "auto")
        results += list(forward) + [ops._soft_topk_mask_jvp(w, x, forward[1], 0.3, 4.0 / 3.0, -1)]
        forward = ops._soft_topk_mag_forward(x, 5, 0.3, 2.0, -1, "auto")
        results += list(forward) + [ops._soft_topk_mag_jvp(w, x, forward[1], 0.3, 2.0, -1)]
        results += [op(x, 5) for op in HARD]
        return results

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)  # torch starts a second thread even on a 1-CPU machine
        two = run()
    finally:
        torch.set_num_threads(threads)
    assert len(one) == len(two) == 22
    for a, b in zip(one, two):
        assert torch.equal(a, b)
