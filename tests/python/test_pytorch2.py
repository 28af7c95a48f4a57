"""PyTorch 2 integration: opcheck of every op, torch.compile, torch.func, forward-mode AD,
torch.export, autocast, and second derivatives (which raise an error naming the op)."""

import pytest
import torch
from torch.autograd import forward_ad
from torch.func import grad, jacfwd, jacrev, jvp, vjp, vmap
from torch.utils._python_dispatch import TorchDispatchMode

import sparsetopk
from sparsetopk._global import GLOBAL_OPS
from sparsetopk._ops import OPERATORS
from sparsetopk._registration import HAS_VMAP_RULES

from conftest import separated

ops = torch.ops.sparsetopk
SOFT = [sparsetopk.soft_topk_mask, sparsetopk.soft_topk_mag]
# torch < 2.5 has no torch.library.register_vmap: the ops have no vmap rules
# there and vmap runs them once per sample (sparsetopk/_registration.py)
needs_vmap_rules = pytest.mark.skipif(not HAS_VMAP_RULES,
                                      reason=f"torch {torch.__version__} has no torch.library.register_vmap (2.5+): "
                                             "no vmap rules, vmap calls the ops once per sample")
P_VALUES = [4.0 / 3.0, 2.0, 1.5, 3.0]


def soft_input(op, shape=(3, 7), dim=-1, seed=0):
    """float64 input whose entries are well apart (and, for the magnitude, of distinct |x|), away from kinks."""
    return separated(shape, dim=dim, seed=seed, magnitude=op is sparsetopk.soft_topk_mag)


def numeric_jacobian(f, x, eps=1e-6):
    """Central differences of f at x in float64: [f(x).numel(), x.numel()]."""
    flat = x.detach().reshape(-1)
    columns = []
    for i in range(flat.numel()):
        step = torch.zeros_like(flat)
        step[i] = eps
        plus = f((flat + step).reshape(x.shape))
        minus = f((flat - step).reshape(x.shape))
        columns.append(((plus - minus) / (2 * eps)).reshape(-1))
    return torch.stack(columns, dim=1)


class OpCounter(TorchDispatchMode):
    """Counts the sparsetopk ops that reach the kernels (after vmap's batching rules)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "sparsetopk":
            self.calls.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


# ---- torch.library.opcheck: schema, fake tensor, autograd registration, aot_dispatch_dynamic ----

def opcheck_cases():
    torch.manual_seed(0)
    x = torch.randn(3, 6, dtype=torch.float64)
    xg = x.clone().requires_grad_()
    x32 = torch.randn(4, 5, 2, dtype=torch.float32)
    cases = [
        ("soft_topk_mask", (xg, 2, 0.5, 4.0 / 3.0, -1, "auto")),
        ("soft_topk_mask", (x32.clone().requires_grad_(), 2, 0.3, 2.0, 1, "pav")),
        ("soft_topk_mag", (xg, 2, 0.5, 1.5, 0, "threshold")),
        ("soft_topk_mag", (x32, 1, 0.3, 3.0, -1, "auto")),
        ("hard_topk_mask", (x, 2, -1)),
        ("hard_topk_mag", (xg, 3, 0)),
        ("_soft_topk_mask_forward", (x, 2, 0.5, 4.0 / 3.0, -1, "auto")),
        ("_soft_topk_mag_forward", (x32, 2, 0.5, 1.5, 1, "auto")),
        # solver "generic" on the CPU, and "dykstra" with and without num_iter
        ("soft_topk_mag", (xg, 2, 0.5, 3.0, 1, "generic")),
        ("soft_topk_mask", (xg, 2, 0.5, 2.0, -1, "dykstra", 200)),
        ("_soft_topk_mask_forward", (x32, 2, 0.5, 2.0, 1, "generic")),
        ("_soft_topk_mag_forward", (x, 2, 0.5, 2.0, 0, "dykstra", 50)),
        ("_soft_topk_mask_forward", (x, 3, 0.5, 2.0, -1, "dykstra", None)),
    ]
    # The derivative ops, at the state of a forward pass (they are not differentiable again:
    # their inputs do not require grad here; test_second_derivatives_raise covers that).
    g = torch.randn_like(x)
    _, row_state = ops._soft_topk_mask_forward(x, 2, 0.5, 4.0 / 3.0, -1, "auto")
    cases += [("_soft_topk_mask_backward", (g, x, row_state, 0.5, 4.0 / 3.0, -1)),
              ("_soft_topk_mask_jvp", (g, x, row_state, 0.5, 4.0 / 3.0, -1))]
    _, row_state = ops._soft_topk_mag_forward(x, 2, 0.5, 1.5, 0, "auto")
    cases += [("_soft_topk_mag_backward", (g, x, row_state, 0.5, 1.5, 0)),
              ("_soft_topk_mag_jvp", (g, x, row_state, 0.5, 1.5, 0))]
    # The global operators (a list of tensors, an empty one included; sparsetopk/_global.py)
    b = torch.randn(5, dtype=torch.float64)
    parts32 = [torch.randn(2, 3), torch.randn(0), torch.randn(4)]
    cases += [("_soft_topk_mask_global_forward", ([xg, b.clone().requires_grad_()], 4, 0.5, 4.0 / 3.0, "")),
              ("_soft_topk_mag_global_forward", ([t.clone().requires_grad_() for t in parts32], 2, 0.3, 1.5, "")),
              ("hard_topk_mask_global", ([x, b], 3, "")),
              ("hard_topk_mag_global", ([xg, b.clone().requires_grad_()], 3, ""))]
    for form, p in (("mask", 4.0 / 3.0), ("mag", 1.5)):
        _, state = getattr(ops, f"_soft_topk_{form}_global_forward")([x, b], 4, 0.5, p, "")
        for product in ("backward", "jvp"):
            cases.append((f"_soft_topk_{form}_global_{product}", ([g, torch.randn_like(b)], [x, b], state, 0.5, p, "")))
    return cases


@pytest.mark.parametrize("name,args", opcheck_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    op = getattr(ops, name).default
    results = torch.library.opcheck(op, args)
    assert set(results) >= {"test_schema", "test_autograd_registration", "test_faketensor",
                            "test_aot_dispatch_dynamic"}
    assert all(v == "SUCCESS" for v in results.values()), results


def test_every_op_is_covered_by_opcheck():
    names = {name for name, _ in opcheck_cases()}
    defined = {name for name in dir(ops) if name.startswith(("soft_", "hard_", "_soft_"))}
    assert defined == names


def test_the_table_of_operators_implies_every_op_and_its_schema_defaults():
    # sparsetopk/_ops.py: the entries and the ops they imply are the library's ops, and nothing else is.
    implied = set()
    for op in OPERATORS:
        implied.add(op.name)
        if op.soft:
            implied |= {op.forward, op.product("backward"), op.product("jvp")}
        schema = getattr(ops, op.name).default._schema
        assert [a.name for a in schema.arguments[:2]] == ["x", "k"]
        assert tuple(a.default_value for a in schema.arguments[2:]) == op.defaults, schema
        assert getattr(sparsetopk, op.name) is getattr(sparsetopk.functional, op.name)
    # (the global operators, over a list of tensors, are a family of their own: sparsetopk/_global.py)
    assert implied | set(GLOBAL_OPS) == {name for name in dir(ops) if name.startswith(("soft_", "hard_", "_soft_"))}
    assert [op.name for op in OPERATORS] == sparsetopk.__all__[:len(OPERATORS)]


# ---- torch.compile ----

def compiled_cases():
    def mask_fn(x):
        return (sparsetopk.soft_topk_mask(x * 2.0, 2, 0.5) * x).sum(-1)

    def mag_fn(x):
        return sparsetopk.soft_topk_mag(x, 3, 0.3, 1.5).pow(2).sum(-1)

    def hard_mask_fn(x):
        return sparsetopk.hard_topk_mask(x, 2) * x.exp()

    def hard_mag_fn(x):
        return sparsetopk.hard_topk_mag(x, 3, 0).sin()

    def dykstra_fn(x):
        return sparsetopk.soft_topk_mag(x, 3, 0.3, 2.0, solver="dykstra", num_iter=500).pow(2).sum(-1)

    return [mask_fn, mag_fn, hard_mask_fn, hard_mag_fn, dykstra_fn]


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("fn", compiled_cases(), ids=lambda f: f.__name__)
def test_compile_matches_eager_without_graph_breaks(fn, backend, dynamic):
    torch._dynamo.reset()
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    assert torch._dynamo.explain(fn)(x).graph_break_count == 0
    compiled = torch.compile(fn, backend=backend, fullgraph=True, dynamic=dynamic)
    for shape in [(4, 8), (6, 11)]:
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        y = compiled(x)
        (g,) = torch.autograd.grad(y.sum(), x) if y.requires_grad else (torch.zeros_like(x),)
        y_eager = fn(x)
        (g_eager,) = torch.autograd.grad(y_eager.sum(), x) if y_eager.requires_grad else (torch.zeros_like(x),)
        torch.testing.assert_close(y, y_eager, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g, g_eager, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("name", ["soft_topk_mask", "soft_topk_mag", "hard_topk_mask", "hard_topk_mag"])
def test_compiled_call_with_a_bad_k_raises_the_kernels_error(name, backend):
    # The fake kernels check shapes and dtypes only: the graph compiles whole,
    # and the C++ kernel refuses k when the compiled function runs.
    torch._dynamo.reset()
    op = getattr(sparsetopk, name)
    fn = lambda t: op(t, 9) * 2.0  # noqa: E731
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    with pytest.raises(RuntimeError, match=rf"sparsetopk\.{name}: k = 9 is out of range \[0, n = 8\] "
                                           r"\(n = x\.size\(1\)\)") as error:
        compiled(x)
    assert type(error.value) is RuntimeError  # the kernel's error, not one of tracing (torch._dynamo.exc)


def test_compiled_call_with_a_bad_l_or_solver_raises_the_kernels_error():
    torch._dynamo.reset()
    x = torch.randn(4, 8, dtype=torch.float64)
    bad_l = torch.compile(lambda t: sparsetopk.soft_topk_mask(t, 2, -1.0), backend="aot_eager", fullgraph=True)
    message = r"sparsetopk\.soft_topk_mask: l must be finite and > 0, got l = -1"
    with pytest.raises(RuntimeError, match=message) as error:
        bad_l(x)
    assert type(error.value) is RuntimeError
    bad_solver = torch.compile(lambda t: sparsetopk.soft_topk_mag(t, 2, solver="fast"), backend="aot_eager",
                               fullgraph=True)
    with pytest.raises(RuntimeError, match=r'sparsetopk\.soft_topk_mag: solver = "fast" is not one of "auto"') as error:
        bad_solver(x)
    assert type(error.value) is RuntimeError


class Router(torch.nn.Module):
    """A small model using both soft operators: a pruned layer and a soft top-k gate."""

    def __init__(self):
        super().__init__()
        self.layer = sparsetopk.SparseLinear(8, 6, density=0.5, l=0.05)
        self.router = sparsetopk.SoftTopKRouter(d_model=8, num_experts=6, k=2, l=0.5)

    def forward(self, x):
        gates = self.router(x).gates
        return (gates * self.layer(x)).sum(-1)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_compiled_training_step_matches_eager(backend, dynamic):
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = Router().double()
    compiled_model = Router().double()
    compiled_model.load_state_dict(eager.state_dict())

    def step(model, optimizer, x, target):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        optimizer.step()
        return loss.detach()

    opt_eager = torch.optim.SGD(eager.parameters(), lr=0.1)
    opt_compiled = torch.optim.SGD(compiled_model.parameters(), lr=0.1)
    forward = torch.compile(compiled_model, backend=backend, fullgraph=True, dynamic=dynamic)
    x0 = torch.randn(5, 8, dtype=torch.float64)
    assert torch._dynamo.explain(compiled_model)(x0).graph_break_count == 0
    for i in range(4):
        x = torch.randn(5 + i, 8, dtype=torch.float64)
        target = torch.randn(5 + i, dtype=torch.float64)
        loss_eager = step(eager, opt_eager, x, target)
        loss_compiled = step(forward, opt_compiled, x, target)
        torch.testing.assert_close(loss_compiled, loss_eager, rtol=1e-10, atol=1e-12)
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(p_compiled, p_eager, rtol=1e-10, atol=1e-12, msg=name)


# ---- torch.func and forward-mode AD, against finite differences (float64) ----

@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("op", SOFT, ids=lambda f: f.__name__)
def test_func_transforms_match_finite_differences(op, p):
    x = soft_input(op, (2, 6), dim=0)

    def f(t):
        return op(t, 2, 0.7, p, 0)

    expected = numeric_jacobian(f, x).reshape(*x.shape, *x.shape)
    torch.testing.assert_close(jacrev(f)(x), expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(jacfwd(f)(x), expected, rtol=1e-6, atol=1e-7)

    weights = torch.linspace(-1.0, 2.0, x.numel(), dtype=torch.float64).reshape(x.shape)
    grad_expected = torch.einsum("ij,ijkl->kl", weights, expected)
    torch.testing.assert_close(grad(lambda t: (f(t) * weights).sum())(x), grad_expected, rtol=1e-6, atol=1e-7)
    out, pullback = vjp(f, x)
    torch.testing.assert_close(out, f(x))
    torch.testing.assert_close(pullback(weights)[0], grad_expected, rtol=1e-6, atol=1e-7)
    tangent = torch.cos(torch.arange(x.numel(), dtype=torch.float64)).reshape(x.shape)
    tangent_expected = torch.einsum("ijkl,kl->ij", expected, tangent)
    _, out_tangent = jvp(f, (x,), (tangent,))
    torch.testing.assert_close(out_tangent, tangent_expected, rtol=1e-6, atol=1e-7)

    with forward_ad.dual_level():
        dual_out = f(forward_ad.make_dual(x, tangent))
        torch.testing.assert_close(forward_ad.unpack_dual(dual_out).tangent, tangent_expected, rtol=1e-6, atol=1e-7)


def test_hard_topk_mag_under_func_transforms():
    x = separated((3, 5), magnitude=True)
    mask = sparsetopk.hard_topk_mask(x.abs(), 2)
    g = grad(lambda t: sparsetopk.hard_topk_mag(t, 2).sum())(x)
    torch.testing.assert_close(g, mask)
    torch.testing.assert_close(vmap(lambda t: sparsetopk.hard_topk_mag(t, 2))(x), sparsetopk.hard_topk_mag(x, 2))
    _, tangent = jvp(lambda t: sparsetopk.hard_topk_mag(t, 2), (x,), (torch.ones_like(x),))
    torch.testing.assert_close(tangent, mask)


@needs_vmap_rules
@pytest.mark.parametrize("op", SOFT, ids=lambda f: f.__name__)
def test_vmap_makes_one_call_for_the_whole_batch(op):
    x = soft_input(op, (5, 4, 7))
    expected = op(x, 3, 0.5)
    counter = OpCounter()
    with counter:
        out = vmap(lambda t: op(t, 3, 0.5))(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert len(counter.calls) == 1, counter.calls
    # nested vmap, batch dims in other places, and a logical 0-d input
    nested = vmap(vmap(lambda t: op(t, 3, 0.5)), in_dims=1, out_dims=1)(x)  # the rows of x[:, j] for each j
    torch.testing.assert_close(nested, expected, rtol=0, atol=0)
    along_dim0 = vmap(lambda t: op(t, 2, 0.5, dim=0), in_dims=2, out_dims=2)(x)
    torch.testing.assert_close(along_dim0, op(x, 2, 0.5, dim=0), rtol=0, atol=0)
    scalars = vmap(lambda t: op(t, 1, 0.5))(x.reshape(-1))
    torch.testing.assert_close(scalars, op(x.reshape(-1, 1), 1, 0.5).reshape(-1), rtol=0, atol=0)


@needs_vmap_rules
@pytest.mark.parametrize("op", SOFT, ids=lambda f: f.__name__)
def test_jacrev_and_jacfwd_batch_their_products_into_one_call(op):
    x = soft_input(op, (3, 6))
    counter = OpCounter()
    with counter:
        jacrev(lambda t: op(t, 2, 0.5))(x)
    assert counter.calls.count(f"_{op.__name__}_backward") == 1, counter.calls
    counter = OpCounter()
    with counter:
        jacfwd(lambda t: op(t, 2, 0.5))(x)
    assert counter.calls.count(f"_{op.__name__}_jvp") == 1, counter.calls


# ---- second derivatives: a clear error naming the op, never a silent zero ----

@pytest.mark.parametrize("op", SOFT, ids=lambda f: f.__name__)
def test_second_derivatives_raise(op):
    x = soft_input(op, (2, 5)).requires_grad_()
    message = rf"sparsetopk\.{op.__name__}( backward| jvp)?: second derivatives are not implemented"
    (g,) = torch.autograd.grad((op(x, 2, 0.5) ** 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=message):
        g.sum().backward()
    f = lambda t: (op(t, 2, 0.5) ** 2).sum()  # noqa: E731
    with pytest.raises(RuntimeError, match=message):
        grad(lambda t: grad(f)(t).sum())(x.detach()[0])
    with pytest.raises(RuntimeError, match=message):
        jvp(grad(f), (x.detach()[0],), (torch.ones(5, dtype=torch.float64),))
    with pytest.raises(RuntimeError, match=message):
        jacrev(jacrev(f))(x.detach()[0])
    with pytest.raises(RuntimeError, match=message):
        torch.func.hessian(f)(x.detach()[0])


# ---- torch.export ----

def test_export_of_a_module_using_the_ops():
    torch.manual_seed(0)
    model = Router().double().eval()
    x = torch.randn(5, 8, dtype=torch.float64)
    exported = torch.export.export(model, (x,))
    names = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert any("sparsetopk" in name for name in names), names
    x2 = torch.randn(5, 8, dtype=torch.float64)
    torch.testing.assert_close(exported.module()(x2), model(x2), rtol=1e-12, atol=1e-12)


def test_export_with_a_dynamic_batch():
    class Mask(torch.nn.Module):
        def forward(self, x):
            return sparsetopk.soft_topk_mask(x, 2, 0.5) + sparsetopk.soft_topk_mag(x, 2, 0.5)

    x = torch.randn(4, 6)
    batch = torch.export.Dim("batch")
    exported = torch.export.export(Mask(), (x,), dynamic_shapes={"x": {0: batch}})
    x2 = torch.randn(9, 6)
    torch.testing.assert_close(exported.module()(x2), Mask()(x2), rtol=0, atol=0)


def test_export_with_a_bad_k_raises_when_run():
    class Mask(torch.nn.Module):
        def forward(self, x):
            return sparsetopk.soft_topk_mask(x, 7, 0.5)

    exported = torch.export.export(Mask(), (torch.randn(4, 6),))
    with pytest.raises(RuntimeError, match=r"sparsetopk\.soft_topk_mask: k = 7 is out of range \[0, n = 6\]"):
        exported.module()(torch.randn(4, 6))


# ---- autocast: float16 / bfloat16 computed in float32, returned in the input dtype ----

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", SOFT, ids=lambda f: f.__name__)
def test_autocast_computes_half_inputs_in_float32(op, dtype):
    x32 = soft_input(op, (4, 9)).float()
    linear = torch.nn.Linear(9, 9).float()
    with torch.autocast("cpu", dtype=dtype):
        h = linear(x32)
        assert h.dtype == dtype
        out = op(h, 3, 0.5)
    assert out.dtype == dtype
    expected = op(h.float(), 3, 0.5).to(dtype)  # computed from the same half values in float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    x = h.detach().clone().requires_grad_()
    op(x, 3, 0.5).sum().backward()
    assert x.grad.dtype == dtype


def test_meta_and_fake_tensors_propagate_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(7, 4, 5)
        out, row_state = ops._soft_topk_mag_forward(x, 2, 0.5, 4.0 / 3.0, 1, "auto")
        assert out.shape == (7, 4, 5)
        assert row_state.shape == (7, 11, 5) and row_state.dtype == torch.float64
    for device in ["meta", "cpu"]:  # slices of 0 entries
        x = torch.empty(2, 0, 4, device=device)
        out, row_state = ops._soft_topk_mask_forward(x, 0, 0.5, 2.0, 1, "auto")
        assert out.shape == x.shape and row_state.shape == (2, 11, 4)


@pytest.mark.parametrize("name", ["soft_topk_mask", "soft_topk_mag", "hard_topk_mag"])
def test_forward_ad_through_the_raw_op_raises_instead_of_a_zero_tangent(name):
    # torch.ops.sparsetopk.* have the C++ autograd kernel (reverse mode only); the
    # functions of the package are the forward-mode entry points.
    x = separated((2, 5), magnitude=True)
    op = getattr(ops, name)
    message = rf"sparsetopk\.{name}: forward-mode AD goes through the Python function sparsetopk\.{name}"
    with pytest.raises(RuntimeError, match=message):
        jvp(lambda t: op(t, 2), (x,), (torch.ones_like(x),))
    with forward_ad.dual_level(), pytest.raises(RuntimeError, match=message):
        op(forward_ad.make_dual(x, torch.ones_like(x)), 2)
