"""sparsetopk.jax under jax.jit with inputs sharded across devices (docs/jax.md, "Sharding").

Needs 8 devices, which the CPU gives only with XLA_FLAGS=--xla_force_host_platform_device_count=8
set before jax starts its backends. So the normal test run (one device, where the other JAX
suites run in the same process) has one test here, test_sharding_in_8_device_process, whose module
runs again in a pytest subprocess with that flag, shared with test_jax_global_sharded.py
(_eight_devices.py); the other tests run only there.

In the subprocess, for every operator (the soft operators, with and without state through their
derivatives' targets, Dykstra, the hard operators, topk_sum, topk_loss), on a batch sharded over a
1-d mesh of 8 and over a (4, 2) mesh with the rows on the 4 and a leading extra axis on the 2,
with explicit and automatic mesh axes, jitted: the forward, grad, jvp and vmap equal the unsharded
results bit for bit, stay sharded like the rows, the custom calls run on each device's rows only
and the compiled HLO holds no all-gather, all-to-all or collective-permute. The control: the same
calls lowered without the partitioning rules (the test hook _ffi.batch_partitioning_off) gather
the batch. A top-k axis sharded across devices is gathered along that axis only.
"""

import os
import re

import numpy as np
import pytest

from _eight_devices import CHILD, DEVICES, in_child, launcher

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

import sparsetopk.jax as stj  # noqa: E402
from sparsetopk.jax import _ffi  # noqa: E402

COLLECTIVES = ("all-gather", "all-to-all", "collective-permute")


@launcher
def test_sharding_in_8_device_process(eight_device_process):
    """This module's tests, in a process with 8 CPU devices."""
    eight_device_process.check(__file__)


# ---- the operators: f(x, t) with t the labels (topk_loss only); all row-wise along the last axis ----

K = 3
OPS = {
    "soft_topk_mask": lambda x, t: stj.soft_topk_mask(x, K),
    "soft_topk_mag p=2": lambda x, t: stj.soft_topk_mag(x, K, 0.3, 2.0),
    "soft_topk_mask dykstra": lambda x, t: stj.soft_topk_mask(x, K, 0.3, 2.0, solver="dykstra", num_iter=40),
    "soft_topk_mag axis=-2": lambda x, t: jnp.swapaxes(stj.soft_topk_mag(jnp.swapaxes(x, -1, -2), K, axis=-2),
                                                       -1, -2),
    "hard_topk_mask": lambda x, t: stj.hard_topk_mask(x, K),
    "hard_topk_mag": lambda x, t: stj.hard_topk_mag(x, K),
    "topk_sum": lambda x, t: stj.topk_sum(x, K, 0.2),
    "topk_loss": lambda x, t: stj.topk_loss(x, t, K, 0.2),
}
VALUE_OPS = ("topk_sum", "topk_loss")  # one value per row: the result has x's rows only

# name: (mesh shape, mesh axes, x's shape, x's spec); the rows (and the labels) are x without its last axis
MESHES = {
    "1d": ((8,), ("b",), (16, 10), P("b", None)),
    "2d": ((4, 2), ("b", "e"), (2, 8, 10), P("e", "b", None)),
}
AXIS_TYPES = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}


def _data(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(shape).astype(np.float32)
    t = rng.integers(0, shape[-1], shape[:-1]).astype(np.int32)
    return x, w, t


def _setup(mesh_name, axis_type):
    mesh_shape, names, shape, spec = MESHES[mesh_name]
    mesh = jax.make_mesh(mesh_shape, names, axis_types=(AXIS_TYPES[axis_type],) * len(names))
    rows = P(*spec[:-1])
    return mesh, shape, spec, rows


def _put(mesh, array, spec):
    return jax.device_put(jnp.asarray(array), NamedSharding(mesh, spec))


def _collectives(hlo: str):
    return [c for c in COLLECTIVES if c in hlo]


def _custom_call_shapes(hlo: str):
    """The result shapes of the sparsetopk custom calls in compiled HLO: the first array shape of each
    such instruction (a tuple's first element)."""
    shapes = []
    for line in hlo.splitlines():
        if "custom-call(" in line and 'custom_call_target="sparsetopk_' in line:
            dims = re.search(r"= \(?\w+\[([\d,]*)\]", line).group(1)
            shapes.append(tuple(int(d) for d in dims.split(",") if d))
    return shapes


def _local_rows(mesh, shape, spec):
    """The leading axes of x that one device holds."""
    local = []
    for size, axes in zip(shape[:-1], spec[:-1]):
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        local.append(size // int(np.prod([mesh.shape[a] for a in axes], dtype=int)))
    return tuple(local)


def _check(f, args, reference_args, mesh, shape, spec, result_specs, calls=True):
    """Jitted f on the sharded args: equal to f on the unsharded ones bit for bit, each result sharded as
    in result_specs, no collective that moves the batch, every custom call on one device's rows (and
    some custom call, unless ``calls`` is False: hard_topk_mask's gradient is zero without one)."""
    compiled = jax.jit(f).lower(*args).compile()
    hlo = compiled.as_text()
    assert _collectives(hlo) == [], _collectives(hlo)
    found = _custom_call_shapes(hlo)
    assert found or not calls, "no sparsetopk custom call in the compiled module"
    local = _local_rows(mesh, shape, spec)
    for call in found:
        assert call[:len(local)] == local, (found, local)
    results = jax.tree.leaves(jax.jit(f)(*args))
    expected = jax.tree.leaves(jax.jit(f)(*reference_args))
    for result, want, result_spec in zip(results, expected, result_specs):
        np.testing.assert_array_equal(np.asarray(result), np.asarray(want))
        if result_spec is None:
            continue
        assert result.sharding.is_equivalent_to(NamedSharding(mesh, result_spec), result.ndim), \
            (result.sharding, result_spec)
    return hlo


@pytest.fixture(scope="module", autouse=True)
def _eight_devices():
    if os.environ.get(CHILD) == "1":
        assert jax.device_count() == DEVICES, "XLA_FLAGS did not give the subprocess 8 devices"


@in_child
@pytest.mark.parametrize("axis_type", AXIS_TYPES)
@pytest.mark.parametrize("mesh_name", MESHES)
@pytest.mark.parametrize("name", OPS)
def test_forward_and_grad_stay_sharded(name, mesh_name, axis_type):
    mesh, shape, spec, rows = _setup(mesh_name, axis_type)
    op = OPS[name]
    x, w, t = _data(shape)
    out_spec = rows if name in VALUE_OPS else spec
    weights = w[..., 0] if name in VALUE_OPS else w
    sharded = (_put(mesh, x, spec), _put(mesh, weights, out_spec), _put(mesh, t, rows))
    plain = tuple(jnp.asarray(a) for a in (x, weights, t))

    with jax.set_mesh(mesh):
        _check(lambda x, w, t: op(x, t), sharded, plain, mesh, shape, spec, [out_spec])
        grad = jax.grad(lambda x, w, t: jnp.sum(op(x, t) * w))
        # hard_topk_mask's gradient is a constant zero: no custom call, and no sharding to keep
        constant = name == "hard_topk_mask"
        _check(grad, sharded, plain, mesh, shape, spec, [None if constant else spec], calls=not constant)


@in_child
@pytest.mark.parametrize("axis_type", AXIS_TYPES)
@pytest.mark.parametrize("name", ["soft_topk_mask", "soft_topk_mag p=2", "soft_topk_mask dykstra", "topk_sum"])
def test_jvp_and_vmap_stay_sharded(name, axis_type):
    """jvp: the forward with state and the JVP target; vmap over the sharded leading axis of the 2-d
    mesh's input (the vmapped axis is one more row axis of the same custom call)."""
    mesh, shape, spec, rows = _setup("2d", axis_type)
    op = OPS[name]
    x, w, t = _data(shape, seed=1)
    sharded = (_put(mesh, x, spec), _put(mesh, w, spec), _put(mesh, t, rows))
    plain = tuple(jnp.asarray(a) for a in (x, w, t))
    out_spec = rows if name in VALUE_OPS else spec
    _check(lambda x, w, t: jax.jvp(lambda u: op(u, t), (x,), (w,)), sharded, plain, mesh, shape, spec,
           [out_spec, out_spec])
    vmapped = jax.vmap(lambda x, w, t: jax.grad(lambda u: jnp.sum(op(u, t) * (w if name not in VALUE_OPS
                                                                     else w[..., 0])))(x))
    _check(vmapped, sharded, plain, mesh, shape, spec, [spec])


@in_child
@pytest.mark.parametrize("name", OPS)
def test_control_without_rules_gathers(name):
    """The assertions above fire without the rules: the same calls, lowered as plain custom calls,
    are replicated, and every device gathers the batch (the results are still right)."""
    mesh, shape, spec, rows = _setup("1d", "auto")
    op = OPS[name]
    x, w, t = _data(shape)
    weights = w[..., 0] if name in VALUE_OPS else w
    sharded = (_put(mesh, x, spec), _put(mesh, weights, rows if name in VALUE_OPS else spec), _put(mesh, t, rows))
    plain = tuple(jnp.asarray(a) for a in (x, weights, t))
    forward = lambda x, w, t: op(x, t)  # noqa: E731
    grad = jax.grad(lambda x, w, t: jnp.sum(op(x, t) * w))
    for f in (forward, grad) if name != "hard_topk_mask" else (forward,):  # its gradient: a constant zero
        with _ffi.batch_partitioning_off():
            hlo = jax.jit(f).lower(*sharded).compile().as_text()
            result = jax.jit(f)(*sharded)
        assert "all-gather" in hlo
        calls = _custom_call_shapes(hlo)
        assert calls and all(call[0] == shape[0] for call in calls)  # the whole batch on each device
        np.testing.assert_array_equal(np.asarray(result), np.asarray(jax.jit(f)(*plain)))


@in_child
@pytest.mark.parametrize("axis_type", AXIS_TYPES)
@pytest.mark.parametrize("name", ["soft_topk_mask", "soft_topk_mag p=2", "topk_sum", "hard_topk_mag"])
def test_topk_axis_sharded_is_gathered_along_it_only(name, axis_type):
    """x's rows over "b" (4) and its top-k axis over "e" (2): the top-k axis is gathered (an all-gather
    along that dimension only, never of the rows); the rows stay sharded. TODO(issue 23, item 4): a
    global solve instead of the gather."""
    mesh, _, _, _ = _setup("2d", axis_type)
    shape, spec, rows = (8, 12), P("b", "e"), P("b")
    op = OPS[name]
    x, w, t = _data(shape, seed=2)
    out_spec = rows if name in VALUE_OPS else P("b", None)
    weights = w[..., 0] if name in VALUE_OPS else w
    sharded = (_put(mesh, x, spec), _put(mesh, weights, out_spec if name in VALUE_OPS else spec))
    for f, result_spec in ((lambda x, w: op(x, None), out_spec),
                           (jax.grad(lambda x, w: jnp.sum(op(x, None) * w)), None)):
        hlo = jax.jit(f).lower(*sharded).compile().as_text()
        gathers = [line for line in hlo.splitlines() if "all-gather(" in line]
        assert gathers and all("dimensions={1}" in line for line in gathers), gathers
        assert "all-to-all" not in hlo
        assert all(call[0] == 2 for call in _custom_call_shapes(hlo))  # each device: its 2 rows, whole
        result = jax.jit(f)(*sharded)
        np.testing.assert_array_equal(np.asarray(result), np.asarray(jax.jit(f)(jnp.asarray(x),
                                                                                jnp.asarray(weights))))
        if result_spec is not None:
            assert result.sharding.is_equivalent_to(NamedSharding(mesh, result_spec), result.ndim), result.sharding


@in_child
def test_one_row_and_eager():
    """A 1-d x (one row: nothing to partition, the call is replicated) and an eager call on a sharded
    array (the primitive jitted alone) keep working."""
    mesh, shape, spec, rows = _setup("1d", "explicit")
    x, _, _ = _data(shape)
    row = _put(mesh, x[0], P())
    np.testing.assert_array_equal(np.asarray(stj.soft_topk_mask(row, K)), np.asarray(stj.soft_topk_mask(x[0], K)))
    sharded = _put(mesh, x, spec)
    out = stj.soft_topk_mag(sharded, K)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(stj.soft_topk_mag(jnp.asarray(x), K)))
    assert out.sharding.is_equivalent_to(NamedSharding(mesh, spec), out.ndim)


@in_child
def test_shardy_rule_builders_are_there():
    """The sharding rule is built with JAX's own builders (a private module): a JAX without them
    lowers unpartitioned calls under Shardy, which this makes a failure rather than a slowdown."""
    assert _ffi.str_to_sdy_sharding_rule is not None and _ffi.sdy_sharding_rule_to_mlir is not None


@in_child
def test_gspmd_partitioner():
    """The same without Shardy (GSPMD, deprecated but still selectable): num_batch_dims alone."""
    mesh, shape, spec, rows = _setup("1d", "auto")
    x, w, _ = _data(shape)
    sharded, plain = (_put(mesh, x, spec), _put(mesh, w, spec)), (jnp.asarray(x), jnp.asarray(w))
    previous = jax.config.jax_use_shardy_partitioner
    jax.config.update("jax_use_shardy_partitioner", False)
    try:
        _check(lambda x, w: stj.soft_topk_mag(x, K), sharded, plain, mesh, shape, spec, [spec])
        _check(jax.grad(lambda x, w: jnp.sum(stj.soft_topk_mask(x, K) * w)), sharded, plain, mesh, shape, spec,
               [spec])
    finally:
        jax.config.update("jax_use_shardy_partitioner", previous)


@in_child
def test_inside_shard_map():
    """Within shard_map each device's block is an array of its own: the call runs on it, and grad too."""
    mesh, shape, spec, rows = _setup("1d", "explicit")
    x, w, _ = _data(shape)
    local = jax.shard_map(lambda u: stj.soft_topk_mask(u, K), mesh=mesh, in_specs=spec, out_specs=spec)
    sharded, plain = (_put(mesh, x, spec), _put(mesh, w, spec)), (jnp.asarray(x), jnp.asarray(w))
    with jax.set_mesh(mesh):
        hlo = jax.jit(local).lower(sharded[0]).compile().as_text()
        assert _collectives(hlo) == []
        np.testing.assert_array_equal(np.asarray(jax.jit(local)(sharded[0])),
                                      np.asarray(stj.soft_topk_mask(plain[0], K)))
        grad = jax.jit(jax.grad(lambda u, v: jnp.sum(local(u) * v)))(*sharded)
    want = jax.grad(lambda u, v: jnp.sum(stj.soft_topk_mask(u, K) * v))(*plain)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(want))


@in_child
@pytest.mark.filterwarnings("ignore::sparsetopk.jax.HostFallbackWarning")
def test_host_fallback_is_not_partitioned():
    """The host fallback of GPU arrays (forced onto the CPU, as in test_jax_gpu_fallback.py) has no
    partitioning rule: XLA runs its callback on one device and gathers the batch there. Still right,
    and with explicit sharding the result is typed, and placed, as the rows."""
    mesh, shape, spec, rows = _setup("1d", "explicit")
    x, _, _ = _data(shape)
    f = jax.jit(lambda u: stj.soft_topk_mask(u, K))
    want = np.asarray(f(jnp.asarray(x)))
    with _ffi.host_fallback_on("cpu"), jax.set_mesh(mesh):
        sharded = _put(mesh, x, spec)
        assert "all-gather" in f.lower(sharded).compile().as_text()
        out = f(sharded)
    np.testing.assert_array_equal(np.asarray(out), want)
    assert out.sharding.is_equivalent_to(NamedSharding(mesh, spec), out.ndim)
