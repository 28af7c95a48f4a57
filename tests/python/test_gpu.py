"""The GPU suite: every op on CUDA tensors against the CPU core (scripts/gpu-check.sh runs it).

Without a CUDA device every test here is skipped, and says so. On a GPU it
checks, for each op and p in {4/3, 2, 1.5, 3}: the forward, the VJP and the
JVP of both CUDA paths against the CPU core on random, tied and hostile rows,
in float32 and float64: the default one (the device-generic ATen
implementation) and the opt-in hand-written kernels (UNVERIFIED until this
suite passes on a GPU: `path` "cuda_kernel", turned on with
sparsetopk.use_cuda_kernels); the kernels' saved state (one RowState per row)
against the core's, their derivatives at the core's state, and their edge
cases (k = 0, k = n, empty and non-contiguous tensors, dim != -1, half types,
long rows); that a non-default device and the current stream are respected;
and a torch.compile of a CUDA training step against eager.
"""

import contextlib

import pytest
import torch

import sparsetopk

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")

SOFT = [sparsetopk.soft_topk_mask, sparsetopk.soft_topk_mag]
HARD = [sparsetopk.hard_topk_mask, sparsetopk.hard_topk_mag]
P_VALUES = [4.0 / 3.0, 2.0, 1.5, 3.0]


def rows(kind: str, shape, dtype, seed=0):
    """Random, tied or hostile rows (float64 on the CPU, then cast)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    if kind == "tied":  # few distinct values: ties straddle the k-th entry
        x = torch.round(x * 2) / 2
    elif kind == "hostile":  # wide magnitudes, exact zeros, a NaN row, duplicated extremes
        x = x * torch.logspace(-6, 6, shape[-1], dtype=torch.float64)
        x[..., ::7] = 0.0
        x[0] = float("nan")
        if x.shape[0] > 2:
            x[1] = x[1].abs().max()
    return x.to(dtype)


PATHS = ["generic", "cuda_kernel"]


@contextlib.contextmanager
def cuda_path(path: str):
    """The CUDA path every op takes inside: the default generic one, or the opt-in kernels."""
    if path == "generic":
        yield
        return
    if not sparsetopk.cuda_kernels_available():
        pytest.skip("the CUDA kernels' library (libsparsetopk_torch_cuda.so) is not loaded")
    previous = sparsetopk.use_cuda_kernels(True)
    try:
        yield
    finally:
        sparsetopk.use_cuda_kernels(previous)


def tolerance(dtype):
    return {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["random", "tied", "hostile"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("op", SOFT, ids=lambda f: f.__name__)
def test_cuda_soft_ops_match_the_cpu_core(op, p, dtype, kind, path):
    with cuda_path(path):
        soft_ops_match_the_cpu_core(op, p, dtype, kind)


def soft_ops_match_the_cpu_core(op, p, dtype, kind):
    for shape, k in [((64, 33), 4), ((8, 1000), 100), ((3, 5), 5), ((4, 1), 0)]:
        x = rows(kind, shape, dtype)
        g = torch.randn(shape, dtype=dtype)
        xc = x.clone().requires_grad_()
        out_cpu = op(xc, k, 0.3, p)
        (vjp_cpu,) = torch.autograd.grad(out_cpu, xc, g)
        xg = x.cuda().requires_grad_()
        out_gpu = op(xg, k, 0.3, p)
        (vjp_gpu,) = torch.autograd.grad(out_gpu, xg, g.cuda())
        assert out_gpu.device == xg.device and out_gpu.dtype == dtype
        torch.testing.assert_close(out_gpu.cpu(), out_cpu.detach(), equal_nan=True, **tolerance(dtype))
        torch.testing.assert_close(vjp_gpu.cpu(), vjp_cpu, equal_nan=True, **tolerance(dtype))
        _, jvp_cpu = torch.func.jvp(lambda t: op(t, k, 0.3, p), (x,), (g,))
        _, jvp_gpu = torch.func.jvp(lambda t: op(t, k, 0.3, p), (x.cuda(),), (g.cuda(),))
        torch.testing.assert_close(jvp_gpu.cpu(), jvp_cpu, equal_nan=True, **tolerance(dtype))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op", HARD, ids=lambda f: f.__name__)
def test_cuda_hard_ops_match_the_cpu_core(op, path):
    with cuda_path(path):
        for kind in ["random", "tied", "hostile"]:
            for shape, k in [((32, 17), 5), ((4, 40000), 1000), ((3, 9), 0), ((3, 9), 9)]:
                for dtype in [torch.float32, torch.float64]:
                    x = rows(kind, shape, dtype)
                    torch.testing.assert_close(op(x.cuda(), k).cpu(), op(x, k), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op", SOFT, ids=lambda f: f.__name__)
def test_half_dtypes_on_cuda(op, path):
    with cuda_path(path):
        for dtype in [torch.float16, torch.bfloat16]:
            x = rows("random", (16, 40), torch.float32).to(dtype)
            out = op(x.cuda(), 3, 0.5)
            assert out.dtype == dtype
            torch.testing.assert_close(out.cpu(), op(x, 3, 0.5), rtol=1e-2, atol=1e-2)


# ---- the opt-in kernels only ----

FORWARD = {sparsetopk.soft_topk_mask: "_soft_topk_mask_forward", sparsetopk.soft_topk_mag: "_soft_topk_mag_forward"}
PRODUCTS = {sparsetopk.soft_topk_mask: ("_soft_topk_mask_backward", "_soft_topk_mask_jvp"),
            sparsetopk.soft_topk_mag: ("_soft_topk_mag_backward", "_soft_topk_mag_jvp")}
# row_state's fields along dim (sparsetopk/row_state.hpp)
GAMMA, BLOCK_WEIGHT, UNCHANGED_FROM, FIRST_KEY, FIRST_INDEX, LAST_KEY, LAST_INDEX = range(7)


@pytest.mark.parametrize("kind", ["random", "tied", "hostile"])
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("op", SOFT, ids=lambda f: f.__name__)
def test_kernel_state_matches_the_cpu_core(op, p, kind):
    """row_state of solver="cuda_kernel" against the core's: one RowState per row (W_B and the band's
    first and last entries exactly: their keys are entries of x; gamma and unchanged_from to rounding)."""
    if not sparsetopk.cuda_kernels_available():
        pytest.skip("the CUDA kernels' library (libsparsetopk_torch_cuda.so) is not loaded")
    forward = getattr(torch.ops.sparsetopk, FORWARD[op])
    for shape, k in [((64, 33), 4), ((8, 1000), 100), ((2, 7), 0), ((2, 7), 7)]:
        x = rows(kind, shape, torch.float64)
        out_cpu, state_cpu = forward(x, k, 0.3, p, -1, "auto")
        out, state = forward(x.cuda(), k, 0.3, p, -1, "cuda_kernel")
        assert state.dtype == torch.float64 and state.shape == (*shape[:-1], 7)
        state = state.cpu()
        torch.testing.assert_close(out.cpu(), out_cpu, equal_nan=True, rtol=1e-10, atol=1e-12)
        exact = [BLOCK_WEIGHT, FIRST_KEY, FIRST_INDEX, LAST_KEY, LAST_INDEX]
        torch.testing.assert_close(state[..., exact], state_cpu[..., exact], equal_nan=True, rtol=0, atol=0)
        torch.testing.assert_close(state, state_cpu, equal_nan=True, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("kind", ["random", "tied", "hostile"])
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("op", SOFT, ids=lambda f: f.__name__)
def test_kernel_derivatives_at_the_cpu_state(op, p, kind):
    """The kernels' backward and JVP at the core's own row_state (moved to the GPU) against the core's:
    the band recomputed from x on the device, independently of the kernels' forward."""
    forward = getattr(torch.ops.sparsetopk, FORWARD[op])
    with cuda_path("cuda_kernel"):
        for shape, k in [((64, 33), 4), ((8, 1000), 100), ((2, 7), 0), ((2, 7), 7)]:
            for dtype in [torch.float32, torch.float64]:
                x = rows(kind, shape, dtype)
                v = torch.randn(shape, dtype=dtype)
                _, state = forward(x, k, 0.3, p, -1, "auto")
                for name in PRODUCTS[op]:
                    product = getattr(torch.ops.sparsetopk, name)
                    expected = product(v, x, state, 0.3, p, -1)
                    got = product(v.cuda(), x.cuda(), state.cuda(), 0.3, p, -1)
                    torch.testing.assert_close(got.cpu(), expected, equal_nan=True, **tolerance(dtype))


@pytest.mark.parametrize("op", SOFT + HARD, ids=lambda f: f.__name__)
def test_kernel_edge_cases_match_the_cpu_core(op):
    """Empty tensors, a 0-d tensor, non-contiguous input, dim = 0, k = 0 and k = n, NaN and inf rows."""
    soft = op in SOFT
    call = (lambda t, k, dim=-1: op(t, k, 0.3, 4.0 / 3.0, dim)) if soft else (lambda t, k, dim=-1: op(t, k, dim))
    with cuda_path("cuda_kernel"):
        x = rows("random", (6, 10), torch.float64)
        x[2, 3] = float("inf")
        x[4, 0] = float("nan")
        cases = [(torch.empty(0, 5, dtype=torch.float64), 2, -1), (torch.empty(3, 0, dtype=torch.float64), 0, -1),
                 (torch.tensor(1.5, dtype=torch.float64), 1, -1), (x.t(), 2, -1), (x[:, ::2], 3, -1),
                 (x, 4, 0), (x, 0, -1), (x, 10, -1)]
        for t, k, dim in cases:
            torch.testing.assert_close(call(t.cuda(), k, dim).cpu(), call(t, k, dim), equal_nan=True,
                                       rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("op", SOFT, ids=lambda f: f.__name__)
def test_kernel_solver_opts_in_one_call(op):
    """solver="cuda_kernel" reaches the kernels with the switch off; the generic path refuses it on the CPU."""
    if not sparsetopk.cuda_kernels_available():
        pytest.skip("the CUDA kernels' library (libsparsetopk_torch_cuda.so) is not loaded")
    assert sparsetopk.use_cuda_kernels(False) is False
    x = rows("tied", (32, 50), torch.float32)
    out = op(x.cuda(), 7, 0.2, 2.0, -1, "cuda_kernel")
    torch.testing.assert_close(out.cpu(), op(x, 7, 0.2, 2.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, k", [((16, 65536), 1024), ((1, 1_000_000), 100_000)])
@pytest.mark.parametrize("op", SOFT, ids=lambda f: f.__name__)
def test_kernel_long_rows_match_the_cpu_core(op, shape, k):
    """Rows split across blocks in the selection passes (the pruning shapes, scaled to fit the suite)."""
    with cuda_path("cuda_kernel"):
        x = rows("random", shape, torch.float32)
        g = torch.randn(shape, dtype=torch.float32)
        xc = x.clone().requires_grad_()
        out_cpu = op(xc, k, 0.1, 2.0)
        (vjp_cpu,) = torch.autograd.grad(out_cpu, xc, g)
        xg = x.cuda().requires_grad_()
        out = op(xg, k, 0.1, 2.0)
        (vjp,) = torch.autograd.grad(out, xg, g.cuda())
        torch.testing.assert_close(out.cpu(), out_cpu.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(vjp.cpu(), vjp_cpu, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op", SOFT, ids=lambda f: f.__name__)
def test_a_non_default_device_is_respected(op, path):
    with cuda_path(path):
        x = rows("random", (8, 20), torch.float64)
        out = op(x.to("cuda:1"), 3, 0.5)
        assert out.device == torch.device("cuda:1")
        torch.testing.assert_close(out.cpu(), op(x, 3, 0.5), **tolerance(torch.float64))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op", SOFT, ids=lambda f: f.__name__)
def test_the_current_stream_is_used(op, path):
    with cuda_path(path):
        x = rows("random", (256, 64), torch.float32).cuda()
        expected = op(x, 4, 0.3)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out = op(x, 4, 0.3)
        torch.cuda.current_stream().wait_stream(stream)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_compiled_cuda_training_step_matches_eager():
    torch.manual_seed(0)

    def make():
        torch.manual_seed(0)
        return torch.nn.ModuleDict({
            "layer": sparsetopk.SparseLinear(32, 16, density=0.25, l=0.05),
            "router": sparsetopk.SoftTopKRouter(d_model=32, num_experts=8, k=2, l=0.5),
        }).cuda()

    def loss_of(model, x):
        gates = model["router"](x).gates
        return (gates.sum(-1) * model["layer"](x).pow(2).sum(-1)).mean()

    eager, compiled = make(), make()
    step = torch.compile(loss_of, fullgraph=True)
    x = torch.randn(64, 32, device="cuda")
    loss_eager, loss_compiled = loss_of(eager, x), step(compiled, x)
    loss_eager.backward()
    loss_compiled.backward()
    torch.testing.assert_close(loss_compiled, loss_eager, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
