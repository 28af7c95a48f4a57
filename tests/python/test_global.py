"""The global operators over a list of tensors (sparsetopk._global, docs/global.md).

Every value is checked against the row operators on the concatenation of the
flattened tensors (computed independently by sparsetopk.soft_topk_* on
torch.cat), forward and backward; gradcheck in float64 on small cases; the
errors name the argument and the value; the op allocates only its outputs
(measured with torch.profiler's memory events, against the concatenated version).
"""

import pytest
import torch

import sparsetopk
from sparsetopk import _global

P_VALUES = [4.0 / 3.0, 2.0, 1.5, 3.0]
SOFT = [(sparsetopk.soft_topk_mask_global, sparsetopk.soft_topk_mask),
        (sparsetopk.soft_topk_mag_global, sparsetopk.soft_topk_mag)]
HARD = [(sparsetopk.hard_topk_mask_global, sparsetopk.hard_topk_mask),
        (sparsetopk.hard_topk_mag_global, sparsetopk.hard_topk_mag)]
SHAPES = [(3, 4), (5,), (0,), (2, 2, 2), (1,)]


def _tensors(seed, dtype=torch.float64, ties=False, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    result = []
    for shape in shapes:
        t = torch.randn(shape, generator=g, dtype=dtype)
        if ties:
            t = (t * 2).round() / 2  # repeated values across tensors
        result.append(t)
    return result


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.mark.parametrize("global_op, row_op", SOFT)
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_soft_equals_row_operator_on_concatenation(global_op, row_op, p, dtype):
    for seed, ties in [(0, False), (1, True), (2, False)]:
        x = _tensors(seed, dtype, ties)
        n = sum(t.numel() for t in x)
        for k in [0, 1, 7, n - 1, n]:
            out = global_op(x, k, l=0.3, p=p)
            assert [o.shape for o in out] == [t.shape for t in x]
            assert all(o.dtype == dtype for o in out)
            expected = row_op(_flat(x), k, l=0.3, p=p)
            assert torch.equal(_flat(out), expected), (seed, k)


@pytest.mark.parametrize("global_op, row_op", HARD)
def test_hard_equals_row_operator_on_concatenation(global_op, row_op):
    for seed in range(3):
        x = _tensors(seed, ties=seed == 1)
        n = sum(t.numel() for t in x)
        for k in [0, 3, n // 2, n]:
            assert torch.equal(_flat(global_op(x, k)), row_op(_flat(x), k))


@pytest.mark.parametrize("global_op, row_op", SOFT)
@pytest.mark.parametrize("p", [4.0 / 3.0, 2.0, 3.0])
def test_gradient_equals_row_operator_gradient(global_op, row_op, p):
    x = [t.requires_grad_() for t in _tensors(3, ties=False)]
    flat = _flat(x).detach().requires_grad_()
    g = torch.randn(flat.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    out = global_op(x, 8, l=0.5, p=p)
    grads = torch.autograd.grad(out, x, [piece.view(t.shape) for piece, t in zip(g.split([t.numel() for t in x]), x)])
    (expected,) = torch.autograd.grad(row_op(flat, 8, l=0.5, p=p), flat, g)
    assert torch.equal(_flat(grads), expected)


@pytest.mark.parametrize("global_op, row_op", SOFT)
@pytest.mark.parametrize("p", [4.0 / 3.0, 2.0])
def test_gradcheck(global_op, row_op, p):
    x = [t.requires_grad_() for t in _tensors(4, shapes=[(2, 3), (4,), (0,), (3,)])]
    assert torch.autograd.gradcheck(lambda *a: global_op(list(a), 5, l=0.7, p=p), x)


@pytest.mark.parametrize("global_op, row_op", SOFT)
def test_forward_mode_and_torch_func_equal_the_row_operator(global_op, row_op):
    x = _tensors(8, shapes=[(2, 3), (0,), (5,)])
    t = [torch.randn(v.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) for i, v in enumerate(x)]
    row = lambda flat: row_op(flat, 4, l=0.6, p=1.5)  # noqa: E731
    _, expected = torch.func.jvp(row, (_flat(x),), (_flat(t),))
    with torch.autograd.forward_ad.dual_level():
        duals = [torch.autograd.forward_ad.make_dual(v, d) for v, d in zip(x, t)]
        out = global_op(duals, 4, l=0.6, p=1.5)
        tangent = _flat([torch.autograd.forward_ad.unpack_dual(o).tangent for o in out])
    torch.testing.assert_close(tangent, expected, rtol=1e-12, atol=1e-14)
    _, func_tangent = torch.func.jvp(lambda *a: tuple(global_op(list(a), 4, l=0.6, p=1.5)), tuple(x), tuple(t))
    torch.testing.assert_close(_flat(func_tangent), expected, rtol=1e-12, atol=1e-14)
    grads = torch.func.grad(lambda *a: sum((o * o).sum() for o in global_op(list(a), 4, l=0.6, p=1.5)),
                            argnums=(0, 1, 2))(*x)
    expected_grad = torch.func.grad(lambda flat: (row(flat) ** 2).sum())(_flat(x))
    torch.testing.assert_close(_flat(grads), expected_grad, rtol=1e-12, atol=1e-14)


def test_hard_mag_gradient_is_the_kept_entries():
    x = [t.requires_grad_() for t in _tensors(5)]
    out = sparsetopk.hard_topk_mag_global(x, 6)
    grads = torch.autograd.grad(out, x, [torch.ones_like(o) for o in out])
    kept = sparsetopk.hard_topk_mask(_flat(x).detach().abs(), 6)
    assert torch.equal(_flat(grads), kept)


def test_torch_compile_forward_and_backward():
    x = [t.requires_grad_() for t in _tensors(6)]

    def loss(tensors):
        return sum((o * o).sum() for o in sparsetopk.soft_topk_mag_global(tensors, 5, l=0.2))

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), loss(x))
    for a, b in zip(torch.autograd.grad(compiled(x), x), torch.autograd.grad(loss(x), x)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("call, message", [
    (lambda x: sparsetopk.soft_topk_mag_global(x, 100), "k = 100 is out of range [0, n = 26]"),
    (lambda x: sparsetopk.soft_topk_mag_global(x, -1), "k = -1 must be >= 0"),
    (lambda x: sparsetopk.soft_topk_mask_global(x, 2, l=0.0), "l must be finite and > 0, got l = 0"),
    (lambda x: sparsetopk.soft_topk_mask_global(x, 2, p=1.0), "p must be finite and > 1, got p = 1"),
    (lambda x: sparsetopk.soft_topk_mag_global([x[0], x[1].float()], 2), "x[1] is float32 but x[0] is float64"),
    (lambda x: sparsetopk.hard_topk_mag_global([x[0].half()], 2), "x[0] must be float32 or float64, got float16"),
])
def test_errors_name_the_argument(call, message):
    x = _tensors(7)
    with pytest.raises(RuntimeError) as error:
        call(x)
    assert message in str(error.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_other_devices_are_refused_by_name():
    with pytest.raises(RuntimeError, match=r"tensors\[0\] is on cuda:0; the global operators run on the CPU only"):
        sparsetopk.soft_topk_mag_global([torch.ones(3, device="cuda")], 1)


def test_list_errors():
    with pytest.raises(ValueError, match="tensors is an empty list"):
        sparsetopk.soft_topk_mag_global([], 1)
    with pytest.raises(TypeError, match="tensors must be a list of tensors, got one tensor"):
        sparsetopk.soft_topk_mag_global(torch.ones(3), 1)
    with pytest.raises(TypeError, match="group must be a torch.distributed ProcessGroup"):
        sparsetopk.soft_topk_mag_global([torch.ones(3)], 1, group="world")


def peak_allocated_bytes(fn):
    """The peak, over fn's run, of the bytes the CPU allocator holds beyond what
    it held before: the allocation and free events torch.profiler records
    (profile_memory), replayed in order by its memory timeline (a private API of
    torch.profiler, used by its export_memory_timeline)."""
    from torch.profiler._memory_profiler import Action, MemoryProfile

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True,
                                record_shapes=True, with_stack=True) as prof:
        fn()
    live = peak = 0
    for _, action, _, size in MemoryProfile(prof.profiler.kineto_results).timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak


def test_peak_memory_is_the_outputs_not_the_concatenation():
    x = [torch.randn(256, 256, dtype=torch.float64) for _ in range(8)]  # 8 x 512 KiB
    total = sum(t.numel() * t.element_size() for t in x)
    k = sum(t.numel() for t in x) // 10
    global_peak = peak_allocated_bytes(lambda: sparsetopk.soft_topk_mag_global(x, k, l=0.01))
    concat_peak = peak_allocated_bytes(
        lambda: sparsetopk.soft_topk_mag(torch.cat([t.flatten() for t in x]), k, l=0.01).split(
            [t.numel() for t in x]))
    # the outputs themselves (total) and the state; the concatenated version adds the concatenation
    assert global_peak <= total + 4096
    assert concat_peak >= 2 * total
