"""The ATen ("generic") path reads nothing back to the host off the CPU
(docs/generic.md, "Host syncs").

No GPU here, so the test runs that path on CPU tensors as a device runs it:
- device mode (torch.ops.sparsetopk._generic_device_mode(True)) makes the path
  treat CPU tensors as a device's: no early exit of the root finder nor of
  Dykstra's iterations, the labels' range of topk_loss as a device-side
  assertion;
- each op is redispatched to the kernel that a non-CPU tensor gets (the
  CompositeExplicitAutograd one, which fills every backend key without a
  kernel of its own, PrivateUse1 among them), so that the backward, the JVP,
  the hard ops and the losses run the ATen path too, not the CPU core.
Under torch.profiler, no op that synchronizes on a device may be recorded,
and the results must equal the ordinary CPU path's bit for bit (the fixed
iteration count only recomputes elements already frozen).
A copy to the CPU (`.cpu()`, `.to("cpu")`) is invisible here (a no-op on
CPU tensors); the ATen path has none.
"""

import contextlib

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import sparsetopk

ops = torch.ops.sparsetopk
AS_ON_A_DEVICE = torch._C.DispatchKeySet(torch._C.DispatchKey.PrivateUse1)

# ATen ops that block the host on a device: they read a value back
# (item/_local_scalar_dense, is_nonzero, equal, allclose), or size their
# output by the data (nonzero and what calls it: masked_select, argwhere,
# one-argument where, boolean indexing; unique; repeat_interleave without
# output_size; bincount and histc, which read the range), or copy to the host.
SYNCING = {
    "aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal", "aten::allclose",
    "aten::nonzero", "aten::nonzero_numpy", "aten::argwhere", "aten::masked_select", "aten::unique_consecutive",
    "aten::repeat_interleave", "aten::bincount", "aten::histc", "aten::histogram", "aten::tolist",
    "aten::_to_cpu", "aten::_pin_memory",
}
SYNCING_PREFIXES = ("aten::unique", "aten::_unique")
# On a device these assertions are kernels (no read); on the CPU their kernel
# reads the flag at once, so what they call is theirs, not the path's.
ASYNC_ASSERTS = {"aten::_assert_async", "aten::_functional_assert_async"}

P_VALUES = [1.1, 4.0 / 3.0, 1.5, 2.0, 3.0, 10.0]
FORMS = ["mask", "mag"]


@contextlib.contextmanager
def device_mode(enabled=True):
    previous = ops._generic_device_mode(enabled)
    try:
        yield
    finally:
        ops._generic_device_mode(previous)


def raw_events(prof):
    """(name, thread, start, end) of every recorded op. The profiler's own
    events(), which builds the tree of FunctionEvents in Python, takes seconds
    on the 10^5 ops of a pass of 200 iterations; the raw list takes 0.1 s."""
    return [(e.name(), e.start_thread_id(), e.start_ns(), e.end_ns()) for e in prof.profiler.kineto_results.events()]


def syncing_ops(prof):
    """The recorded ops that would synchronize on a device (outside an async assertion)."""
    events = raw_events(prof)
    asserts = [e for e in events if e[0] in ASYNC_ASSERTS]
    found = []
    for name, thread, start, end in events:
        if name not in SYNCING and not name.startswith(SYNCING_PREFIXES):
            continue
        if not any(t == thread and s <= start and end <= e for _, t, s, e in asserts):
            found.append(name)
    return found


def recorded(prof):
    return {e[0] for e in raw_events(prof)}


def bits(t):
    """The tensor's bits (NaN payloads and signed zeros included), for a bitwise comparison."""
    return t.view({torch.float64: torch.int64, torch.float32: torch.int32}[t.dtype])


def assert_same(actual, expected):
    if isinstance(expected, torch.Tensor):
        actual, expected = (actual,), (expected,)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype and a.shape == e.shape
        if a.is_floating_point():
            assert torch.equal(bits(a), bits(e))
        else:
            assert torch.equal(a, e)


def check_no_sync(call):
    """call() on the ordinary CPU path, then in device mode under the profiler:
    no syncing op, the same result bit for bit. Returns (result, profile)."""
    expected = call()
    with device_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        actual = call()
    assert syncing_ops(prof) == []
    assert_same(actual, expected)
    return actual, prof


def corpus(dtype=torch.float64):
    """Random, tied and hostile rows in one batch (16 x 19): ties straddling k,
    a constant row, scales 1e-310 to 1e300, a large offset, keys one ulp
    apart, signed zeros, a row with an infinity and one with a NaN."""
    g = torch.Generator().manual_seed(21)
    x = torch.randn(16, 19, generator=g, dtype=torch.float64)
    x[4:8] = torch.floor(x[4:8] * 2) / 2  # ties
    x[4] = 1.5
    x[5, :8] = 2.0
    x[8] *= 1e300
    x[9] *= 1e-310
    x[10] = x[10] * 1e-3 + 1e8
    x[11] = x[11] * 1e3 - 1e6
    x[12] = torch.nextafter(torch.ones(19, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64))
    x[12, ::2] = 1.0
    x[13, 3], x[13, 5] = 0.0, -0.0
    x[14, 2] = float("inf")
    x[15, 7] = float("nan")
    return x.to(dtype)


def test_the_profile_sees_the_cpu_paths_reads():
    """The check can fail: on the ordinary CPU path the root finder's early exit is an aten::item."""
    x = corpus()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ops._soft_topk_mask_forward.default.redispatch(AS_ON_A_DEVICE, x, 5, 0.3, 1.5, -1, "auto", None)
    assert "aten::item" in syncing_ops(prof)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("p", P_VALUES)
def test_soft_forward_backward_and_jvp(form, p):
    x = corpus()
    k, l = 5, 0.3
    forward = getattr(ops, f"_soft_topk_{form}_forward").default
    (out, state), _ = check_no_sync(lambda: forward.redispatch(AS_ON_A_DEVICE, x, k, l, p, -1, "auto", None))
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    for kind in ("backward", "jvp"):
        product = getattr(ops, f"_soft_topk_{form}_{kind}").default
        check_no_sync(lambda: product.redispatch(AS_ON_A_DEVICE, v, x, state, l, p, -1))


@pytest.mark.parametrize("form", FORMS)
def test_float32_and_another_dim(form):
    x = corpus(torch.float32).T.contiguous()
    forward = getattr(ops, f"_soft_topk_{form}_forward").default
    check_no_sync(lambda: forward.redispatch(AS_ON_A_DEVICE, x, 3, 0.5, 4.0 / 3.0, 0, "auto", None))


@pytest.mark.parametrize("form", FORMS)
def test_dykstra(form):
    """num_iter past the CPU's fixed-point checks (every 64 iterations: at::equal)."""
    x = corpus()
    forward = getattr(ops, f"_soft_topk_{form}_forward").default
    check_no_sync(lambda: forward.redispatch(AS_ON_A_DEVICE, x, 5, 0.3, 2.0, -1, "dykstra", 200))


@pytest.mark.parametrize("form", FORMS)
def test_hard(form):
    x = corpus()
    hard = getattr(ops, f"hard_topk_{form}").default
    check_no_sync(lambda: hard.redispatch(AS_ON_A_DEVICE, x, 5, -1))


@pytest.mark.parametrize("p", [4.0 / 3.0, 2.0, 1.5])
def test_topk_sum_and_loss(p):
    x = corpus()
    check_no_sync(lambda: ops._topk_sum_forward.default.redispatch(AS_ON_A_DEVICE, x, 5, 0.3, p, -1))
    target = torch.arange(x.shape[0]) % x.shape[1]
    _, prof = check_no_sync(lambda: ops._topk_loss_forward.default.redispatch(AS_ON_A_DEVICE, x, target, 5, 0.3, p, -1))
    assert "aten::_assert_async" in recorded(prof)  # the labels' range, checked on the device


def test_topk_loss_out_of_range_labels():
    """The CPU's eager error; in device mode the device-side assertion, with the same message
    (on a GPU it fails the stream asynchronously)."""
    scores = corpus()[:3]
    target = torch.tensor([0, 19, 1])
    message = r"sparsetopk\.topk_loss: target holds a label out of range \[0, n = 19\)"
    loss = ops._topk_loss_forward.default
    with pytest.raises(RuntimeError, match=message):
        loss.redispatch(AS_ON_A_DEVICE, scores, target, 2, 0.1, 1.5, -1)
    with device_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        with pytest.raises(RuntimeError, match=message):
            loss.redispatch(AS_ON_A_DEVICE, scores, target, 2, 0.1, 1.5, -1)
    assert "aten::_assert_async" in recorded(prof) and syncing_ops(prof) == []


@pytest.mark.parametrize("function", [sparsetopk.soft_topk_mask, sparsetopk.soft_topk_mag], ids=lambda f: f.__name__)
def test_public_ops_with_solver_generic(function):
    """The public op on a CPU tensor with solver="generic": the ATen forward, the core's derivatives."""
    x0 = corpus()[:14]  # finite rows: a gradient to compare

    def forward_and_backward():
        x = x0.clone().requires_grad_()
        y = function(x, 5, 0.3, 4.0 / 3.0, solver="generic")
        y.backward(torch.ones_like(y))
        return y.detach(), x.grad

    check_no_sync(forward_and_backward)


def test_device_mode_is_restored():
    assert ops._generic_device_mode(False) is False
