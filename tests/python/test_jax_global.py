"""sparsetopk.jax's global operators (docs/jax.md, "Global operators"): one top-k over a list of
arrays equals the row operator on the concatenation of the flattened arrays, bitwise, forward and
derivatives (jvp, grad, jacfwd, jacrev), under jit and vmap. The sharded version (axis_name=
inside shard_map) is tested in test_jax_global_sharded.py."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import sparsetopk.jax as stj  # noqa: E402

SHAPES = [(3, 4), (5,), (0,), (2, 1, 3), ()]
SOFT = ["soft_topk_mag", "soft_topk_mask"]
HARD = ["hard_topk_mag", "hard_topk_mask"]
P = [4.0 / 3.0, 2.0, 1.5]


@pytest.fixture(autouse=True)
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def arrays(seed, dtype=np.float64, shapes=SHAPES, ties=False):
    rng = np.random.default_rng(seed)
    out = []
    for s in shapes:
        a = rng.normal(size=s)
        if ties:
            a = np.round(a * 2) / 2
        out.append(jnp.asarray(a, dtype))
    return out


def cat(parts):
    return jnp.concatenate([jnp.ravel(p) for p in parts])


def split(flat, like):
    out, start = [], 0
    for a in like:
        out.append(flat[start:start + a.size].reshape(a.shape))
        start += a.size
    return out


def args(name, k, l, p):
    return (k,) if name.startswith("hard") else (k, l, p)


@pytest.mark.parametrize("name", SOFT + HARD)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(2))
def test_forward_equals_row_operator_bitwise(name, dtype, seed):
    xs = arrays(seed, dtype, ties=seed == 1)
    n = sum(a.size for a in xs)
    glob, row = getattr(stj, name + "_global"), getattr(stj, name)
    for k in (0, 7, n):
        for p in (P[:2] if name.startswith("soft") else P[:1]):
            out = glob(xs, *args(name, k, 0.3, p))
            assert isinstance(out, list) and [o.shape for o in out] == [a.shape for a in xs]
            assert all(o.dtype == dtype for o in out)
            np.testing.assert_array_equal(np.asarray(cat(out)), np.asarray(row(cat(xs), *args(name, k, 0.3, p))))


@pytest.mark.parametrize("name", SOFT + HARD)
def test_jit_and_pytree(name):
    xs = arrays(4)
    tree = {"a": xs[0], "b": (xs[1], xs[3])}
    f = jax.jit(lambda t: getattr(stj, name + "_global")(t, *args(name, 5, 0.2, 4.0 / 3.0)))
    out = f(tree)
    flat = cat([tree["a"], tree["b"][0], tree["b"][1]])
    ref = getattr(stj, name)(flat, *args(name, 5, 0.2, 4.0 / 3.0))
    np.testing.assert_array_equal(np.asarray(cat([out["a"], out["b"][0], out["b"][1]])), np.asarray(ref))


@pytest.mark.parametrize("name", SOFT + ["hard_topk_mag"])
@pytest.mark.parametrize("p", P)
def test_derivatives_equal_row_operator(name, p):
    xs = arrays(5, shapes=[(2, 3), (4,), (0,), (3,)])
    flat = cat(xs)
    glob, row = getattr(stj, name + "_global"), getattr(stj, name)
    a = args(name, 5, 0.4, p)

    def f(c):
        return cat(glob(split(c, xs), *a))

    def r(c):
        return row(c, *a)

    t = jnp.asarray(np.random.default_rng(1).normal(size=flat.shape))
    np.testing.assert_array_equal(jax.jvp(f, (flat,), (t,))[1], jax.jvp(r, (flat,), (t,))[1])
    np.testing.assert_array_equal(jax.jacrev(f)(flat), jax.jacrev(r)(flat))
    np.testing.assert_array_equal(jax.jacfwd(f)(flat), jax.jacfwd(r)(flat))
    loss = jax.jit(jax.grad(lambda parts: sum(jnp.sum(jnp.sin(o)) for o in glob(parts, *a))))(xs)
    np.testing.assert_array_equal(cat(loss), jax.grad(lambda c: jnp.sum(jnp.sin(r(c))))(flat))


def test_vmap_and_float32():
    xs = arrays(6, np.float32, shapes=[(4,), (6,)])
    stacked = [jnp.stack([x, 2 * x]) for x in xs]
    out = jax.vmap(lambda a, b: stj.soft_topk_mag_global([a, b], 3))(*stacked)
    for i in range(2):
        ref = stj.soft_topk_mag(cat([s[i] for s in stacked]), 3)
        np.testing.assert_array_equal(np.asarray(cat([o[i] for o in out])), np.asarray(ref))


def test_errors():
    xs = arrays(7, shapes=[(3,), (2,)])
    with pytest.raises(ValueError, match="k = 6 is out of range"):
        stj.soft_topk_mag_global(xs, 6)
    with pytest.raises(ValueError, match="at least one array"):
        stj.soft_topk_mag_global([], 1)
    with pytest.raises(TypeError, match="floating-point"):
        stj.hard_topk_mag_global([jnp.arange(3)], 1)
    with pytest.raises(ValueError, match="l must be finite"):
        stj.soft_topk_mask_global(xs, 1, l=0.0)
    with pytest.raises(NotImplementedError, match="second derivatives"):
        jax.hessian(lambda c: jnp.sum(cat(stj.soft_topk_mag_global(split(c, xs), 2))))(cat(xs))


def test_host_fallback_of_gpu_platforms(monkeypatch):
    """A GPU array runs the CPU target on the host (the row operators' fallback, docs/jax.md,
    "GPU arrays"; the CUDA library has no global targets): forced here on the CPU platform."""
    from sparsetopk.jax import _ffi

    monkeypatch.setattr(_ffi, "_warned", False)
    xs = arrays(8, np.float32, shapes=[(3, 4), (5,)])
    ref = stj.soft_topk_mag_global(xs, 6)
    grad_ref = jax.grad(lambda xs: sum(jnp.sum(o ** 2) for o in stj.soft_topk_mag_global(xs, 6)))(xs)
    with pytest.warns(_ffi.HostFallbackWarning, match="sparsetopk_soft_topk_mag_global"):
        with _ffi.host_fallback_on("cpu"):
            out = jax.jit(lambda xs: stj.soft_topk_mag_global(xs, 6))(xs)
            grad = jax.grad(lambda xs: sum(jnp.sum(o ** 2) for o in stj.soft_topk_mag_global(xs, 6)))(xs)
    np.testing.assert_array_equal(cat(out), cat(ref))
    np.testing.assert_array_equal(cat(grad), cat(grad_ref))


def test_custom_calls_of_the_lowered_module():
    """The forward is one call; grad the forward (with its state) and one VJP call; jvp one JVP call."""
    import re

    xs = arrays(9, shapes=[(3, 2), (4,)])

    def f(parts):
        return sum(jnp.sum(jnp.sin(o)) for o in stj.soft_topk_mag_global(parts, 3))

    def calls(function, *args):
        return sorted(re.findall(r"custom_call @(sparsetopk_\w+)", jax.jit(function).lower(*args).as_text()))

    assert calls(f, xs) == ["sparsetopk_soft_topk_mag_global"]
    assert calls(jax.grad(f), xs) == ["sparsetopk_soft_topk_mag_global", "sparsetopk_soft_topk_mag_global_vjp"]
    assert calls(lambda p, t: jax.jvp(f, (p,), (t,)), xs, xs) == ["sparsetopk_soft_topk_mag_global",
                                                                  "sparsetopk_soft_topk_mag_global_jvp"]
