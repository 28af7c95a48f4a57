"""sparsetopk.jax's global operators with axis_name= inside jax.shard_map (docs/jax.md, "Global
operators"): an input sharded along the top-k axis over 8 CPU devices runs the global solve with
psum/pmax/all_gather of at most 256 doubles per collective; the result equals the one-device
operator on the concatenation (the devices' shards in mesh order), forward and grad, and the
compiled HLO holds no collective of x's size.

Needs 8 devices: the normal run has one test here, whose module runs again in a pytest subprocess
with --xla_force_host_platform_device_count=8, shared with test_jax_sharding.py (_eight_devices.py),
with float64 enabled for this module's tests."""

import re

import numpy as np
import pytest

from _eight_devices import DEVICES, in_child, launcher

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import sparsetopk.jax as stj  # noqa: E402

TOLERANCE = 1e-12  # outputs and gradients, absolute, float64 (docs/global.md, "Tolerances")


@launcher
def test_sharded_in_8_device_process(eight_device_process):
    eight_device_process.check(__file__)


@pytest.fixture(scope="module", autouse=True)
def _x64():
    """float64 for this module's tests (the subprocess runs test_jax_sharding.py after them, without)."""
    previous = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


# device d holds a[d] (a row of A entries) and b[d] (a (2, B) block): its part of the global
# row is (a[d], b[d].ravel()), and the global row is every device's part in mesh order
A, B = 120, 9


def data(seed, ties=False):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(DEVICES, A)), rng.normal(size=(DEVICES, 2, B))
    if ties:
        a, b = np.round(a * 4) / 4, np.round(b * 4) / 4
    return a, b


def concatenation(a, b):
    return np.concatenate([np.concatenate([a[d], b[d].ravel()]) for d in range(DEVICES)])


def sharded(function):
    """function([a_d, b_d]) -> [out_a, out_b], per device, as a jitted (a, b) -> (out_a, out_b)."""
    mesh = jax.make_mesh((DEVICES,), ("d",))

    def body(a, b):
        out = function([a[0], b[0]])
        return out[0][None], out[1][None]

    mapped = jax.shard_map(body, mesh=mesh, in_specs=(P("d"), P("d")), out_specs=(P("d"), P("d")))

    def put(a, b):
        return tuple(jax.device_put(jnp.asarray(v), NamedSharding(mesh, P("d"))) for v in (a, b))

    return mapped, put


CASES = {  # name: (operator, args, seed, ties); l = 0.05 leaves a narrow window (gathered), l = 3 a wide one
    "mag narrow": ("soft_topk_mag", (150, 0.05), 0, False),
    "mag wide p=4/3": ("soft_topk_mag", (300, 3.0), 1, False),
    "mag wide p=2": ("soft_topk_mag", (300, 3.0, 2.0), 2, False),
    "mag wide p=1.5": ("soft_topk_mag", (300, 3.0, 1.5), 3, False),
    "mask narrow": ("soft_topk_mask", (150, 0.05), 4, False),
    "mask wide": ("soft_topk_mask", (400, 2.0), 5, False),
    "mask ties": ("soft_topk_mask", (400, 0.5, 2.0), 6, True),
    "hard mag ties": ("hard_topk_mag", (200,), 7, True),
    "hard mask": ("hard_topk_mask", (200,), 8, False),
}


@in_child
@pytest.mark.parametrize("case", list(CASES))
def test_sharded_equals_concatenation(case):
    name, args, seed, ties = CASES[case]
    a, b = data(seed, ties)
    mapped, put = sharded(lambda parts: getattr(stj, name + "_global")(parts, *args, axis_name="d"))
    f = jax.jit(mapped)
    out = concatenation(*map(np.asarray, f(*put(a, b))))
    ref = np.asarray(getattr(stj, name)(jnp.asarray(concatenation(a, b)), *args))
    error = float(np.max(np.abs(out - ref)))
    print(f"\n{case}: forward max abs error {error:.3g}")
    if name == "hard_topk_mask":
        np.testing.assert_array_equal(out, ref)
        return
    if name == "hard_topk_mag":
        np.testing.assert_array_equal(out, ref)
    assert error <= TOLERANCE

    def loss(a, b):
        return sum(jnp.sum(jnp.sin(3 * o)) for o in mapped(a, b))

    ga, gb = jax.jit(jax.grad(loss, argnums=(0, 1)))(*put(a, b))
    grad = concatenation(np.asarray(ga), np.asarray(gb))
    grad_ref = np.asarray(jax.grad(lambda c: jnp.sum(jnp.sin(3 * getattr(stj, name)(c, *args))))(
        jnp.asarray(concatenation(a, b))))
    grad_error = float(np.max(np.abs(grad - grad_ref)))
    print(f"{case}: grad max abs error {grad_error:.3g}")
    assert grad_error <= TOLERANCE


SHAPE = re.compile(r"=\s*\(?([a-z]\d+)\[([\d,]*)\]")


@in_child
def test_hlo_has_small_collectives_only():
    """Every all-reduce and all-gather carries at most 256 doubles per device (8 x 256 gathered),
    whatever n; nothing of x's size crosses devices."""
    mapped, put = sharded(lambda parts: stj.soft_topk_mag_global(parts, 2000, 0.5, axis_name="d"))
    rng = np.random.default_rng(9)
    big_a, big_b = rng.normal(size=(DEVICES, 20000)), rng.normal(size=(DEVICES, 2, 3000))
    hlo = jax.jit(mapped).lower(*put(big_a, big_b)).compile().as_text()
    collectives = [line for line in hlo.splitlines()
                   if re.search(r"\b(all-reduce|all-gather|all-to-all|collective-permute)(-start)?\(", line)]
    assert collectives, "the sharded solve makes collectives"
    for line in collectives:
        assert "all-to-all" not in line and "collective-permute" not in line, line
        match = SHAPE.search(line)
        dims = [int(d) for d in match.group(2).split(",") if d]
        assert int(np.prod(dims)) <= DEVICES * 256, line
    out = concatenation(*map(np.asarray, jax.jit(mapped)(*put(big_a, big_b))))
    ref = np.asarray(stj.soft_topk_mag(jnp.asarray(concatenation(big_a, big_b)), 2000, 0.5))
    error = float(np.max(np.abs(out - ref)))
    print(f"\nn = {out.size}: forward max abs error {error:.3g}, {len(collectives)} collectives in the HLO")
    assert error <= TOLERANCE


@in_child
def test_k_checked_globally():
    mapped, put = sharded(lambda parts: stj.soft_topk_mag_global(parts, DEVICES * (A + 2 * B) + 1, axis_name="d"))
    a, b = data(10)
    with pytest.raises(Exception, match="k"):
        jax.block_until_ready(jax.jit(mapped)(*put(a, b)))


@in_child
def test_two_axis_mesh():
    """On a (4, 2) mesh: a global solve over "d" per slice of "e" (two independent problems,
    forward and grad), and over the tuple ("d", "e") (all 8 devices, in their linear order)."""
    mesh = jax.make_mesh((4, 2), ("d", "e"))
    x = np.random.default_rng(11).normal(size=(2, 4 * 50))
    spec = P("e", "d")
    f = jax.shard_map(lambda a: stj.soft_topk_mag_global([a[0]], 40, 0.1, axis_name="d")[0][None], mesh=mesh,
                      in_specs=spec, out_specs=spec)
    xs = jax.device_put(jnp.asarray(x), NamedSharding(mesh, spec))
    out = np.asarray(jax.jit(f)(xs))
    grad = np.asarray(jax.jit(jax.grad(lambda a: jnp.sum(jnp.sin(3 * f(a)))))(xs))
    for e in range(2):
        row = jnp.asarray(x[e])
        np.testing.assert_allclose(out[e], stj.soft_topk_mag(row, 40, 0.1), rtol=0, atol=TOLERANCE)
        grad_ref = jax.grad(lambda c: jnp.sum(jnp.sin(3 * stj.soft_topk_mag(c, 40, 0.1))))(row)
        np.testing.assert_allclose(grad[e], grad_ref, rtol=0, atol=TOLERANCE)
    y = np.random.default_rng(12).normal(size=(8 * 30,))
    both = P(("d", "e"))
    g = jax.shard_map(lambda a: stj.soft_topk_mask_global([a], 50, 0.1, axis_name=("d", "e"))[0], mesh=mesh,
                      in_specs=both, out_specs=both)
    out = np.asarray(jax.jit(g)(jax.device_put(jnp.asarray(y), NamedSharding(mesh, both))))
    np.testing.assert_allclose(out, stj.soft_topk_mask(jnp.asarray(y), 50, 0.1), rtol=0, atol=TOLERANCE)


@in_child
def test_needs_x64():
    mapped, put = sharded(lambda parts: stj.soft_topk_mag_global(parts, 3, axis_name="d"))
    a, b = data(13)
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(RuntimeError, match="jax_enable_x64"):
            jax.jit(mapped).lower(*put(a.astype(np.float32), b.astype(np.float32)))
    finally:
        jax.config.update("jax_enable_x64", True)


@in_child
@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
def test_sharded_arrays_without_axis_name(axis_type):
    """Without axis_name, under jit, an array sharded over the mesh (explicit or automatic axes)
    is gathered and solved by one call: the one-device result, forward and grad, bitwise."""
    from jax.sharding import AxisType

    kind = AxisType.Explicit if axis_type == "explicit" else AxisType.Auto
    mesh = jax.make_mesh((DEVICES,), ("d",), axis_types=(kind,))
    x = np.random.default_rng(14).normal(size=(DEVICES * 20,)).astype(np.float32)
    extra = jnp.linspace(-1, 1, 5, dtype=jnp.float32)
    ref = stj.soft_topk_mag(jnp.concatenate([jnp.asarray(x), extra]), 30)[:x.size]
    grad_ref = jax.grad(lambda a: jnp.sum(stj.soft_topk_mag(a, 30) ** 2))(jnp.asarray(x))
    with jax.sharding.set_mesh(mesh):
        xs = jax.device_put(x, NamedSharding(mesh, P("d")))
        out = jax.jit(lambda a: stj.soft_topk_mag_global([a, extra], 30)[0])(xs)
        grad = jax.jit(jax.grad(lambda a: jnp.sum(stj.soft_topk_mag_global([a], 30)[0] ** 2)))(xs)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(grad_ref))
