"""sparsetopk.jax.topk_sum and topk_loss (SPEC.md) against a numpy bisection of
the mask's threshold and the sparsemax loss, under jit, vmap and both AD modes."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import sparsetopk.jax as stj  # noqa: E402


def bisection_mask(x, k, l, p):
    x = np.asarray(x, dtype=np.float64)
    if k == 0:
        return np.zeros_like(x)
    lo, hi = x.min() - 2 * l, x.max()
    mask_at = lambda tau: np.clip((x - tau) / l, 0, 1) ** (1 / (p - 1))  # noqa: E731
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mask_at(mid).sum() > k else (lo, mid)
    return min((mask_at(lo), mask_at(hi)), key=lambda m: abs(m.sum() - k))


def reference_sum(x, k, l, p):
    m = bisection_mask(x, k, l, p)
    return float((m * np.asarray(x)).sum() - l / p * (m ** p).sum())


def reference_loss(x, t, k, l, p):
    return reference_sum(x, k, l, p) - float(x[t]) - reference_sum(np.delete(np.asarray(x), t), k - 1, l, p) + l / p


CASES = [(0.1, 4.0 / 3.0), (0.5, 2.0), (0.3, 1.5), (1.0, 3.0)]


@pytest.mark.parametrize("l,p", CASES)
def test_values_match_the_references_and_the_loss_is_zero_exactly_when_the_label_is_selected(l, p):
    x = np.random.default_rng(0).normal(size=(4, 7))
    for k in range(0, 8):
        value = np.asarray(stj.topk_sum(x, k, l, p))
        assert value.shape == (4,)
        assert np.allclose(value, [reference_sum(row, k, l, p) for row in x], atol=1e-10, rtol=0)
    for k in range(1, 8):
        mask = np.asarray(stj.soft_topk_mask(x, k, l, p))
        for t in range(7):
            losses = np.asarray(stj.topk_loss(x, np.full(4, t), k, l, p))
            assert np.allclose(losses, [reference_loss(row, t, k, l, p) for row in x], atol=1e-10, rtol=0)
            assert np.all((losses == 0) == (mask[:, t] == 1)) and np.all(losses >= 0)


def test_derivatives_jit_and_vmap():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 9)))
    target = jnp.array([0, 4, 8, 2, 2], dtype=jnp.int32)
    grad = jax.jit(jax.grad(lambda s: stj.topk_sum(s, 3, 0.5).sum()))(x)
    assert np.allclose(grad, stj.soft_topk_mask(x, 3, 0.5))
    hessian = jax.hessian(lambda t: stj.topk_sum(t, 3, 1.0))(x[0])
    assert np.allclose(hessian, jax.jacrev(lambda t: stj.soft_topk_mask(t, 3, 1.0))(x[0]), atol=1e-12)
    assert np.abs(hessian).sum() > 0
    loss_grad = jax.grad(lambda s: stj.topk_loss(s, target, 2, 0.5).sum())(x)
    step = 1e-6
    for r, i in ((0, 0), (1, 4), (3, 5)):
        e = np.zeros(x.shape)
        e[r, i] = step
        difference = (stj.topk_loss(x + e, target, 2, 0.5).sum() - stj.topk_loss(x - e, target, 2, 0.5).sum()) / (2 * step)
        assert abs(difference - loss_grad[r, i]) < 1e-6
    assert np.allclose(loss_grad.sum(-1), 0, atol=1e-12)
    tangent = jnp.ones_like(x)
    _, loss_tangent = jax.jvp(lambda s: stj.topk_loss(s, target, 2, 0.5), (x,), (tangent,))
    assert np.allclose(loss_tangent, loss_grad.sum(-1), atol=1e-12)  # a uniform shift changes no loss
    batched = jax.jit(jax.vmap(lambda s, t: stj.topk_loss(s, t, 2, 0.5)))(x, target)
    assert np.array_equal(batched, stj.topk_loss(x, target, 2, 0.5))
    with pytest.raises(NotImplementedError, match="topk_loss: second derivatives"):
        jax.hessian(lambda s: stj.topk_loss(s, target, 2, 0.5).sum())(x)


def test_axis_dtypes_and_sparsemax():
    x = np.random.default_rng(2).normal(size=(3, 6, 2)).astype(np.float32)
    target = np.random.default_rng(3).integers(0, 6, size=(3, 2))
    losses = stj.topk_loss(x, target, 2, axis=1)
    assert losses.shape == (3, 2) and losses.dtype == jnp.float32
    assert np.allclose(losses, stj.topk_loss(np.moveaxis(x, 1, -1), target, 2), atol=0)
    z = np.random.default_rng(4).normal(size=10)
    for t in range(10):  # k = 1, p = 2: the sparsemax loss (Martins and Astudillo, 2016), temperature l = 1
        s = np.sort(z)[::-1]
        support = np.sum(1 + np.arange(1, 11) * s > np.cumsum(s))
        tau = (np.cumsum(s)[support - 1] - 1) / support
        expected = -z[t] + 0.5 * np.sum(np.where(z > tau, z ** 2 - tau ** 2, 0)) + 0.5
        assert abs(float(stj.topk_loss(z, t, 1, 1.0, 2.0)) - expected) < 1e-12


def test_bad_arguments_are_named():
    x = np.zeros((2, 4))
    with pytest.raises(ValueError, match=r"topk_loss: k = 0 is out of range \[1, n = 4\]"):
        stj.topk_loss(x, np.array([0, 1]), 0)
    with pytest.raises(ValueError, match=r"topk_loss: target has shape \(3,\)"):
        stj.topk_loss(x, np.array([0, 1, 2]), 1)
    with pytest.raises(TypeError, match=r"target must be an integer array"):
        stj.topk_loss(x, np.array([0.0, 1.0]), 1)
    with pytest.raises(Exception, match=r"sparsetopk_topk_loss: target\[1\] = 4 is out of range \[0, n = 4\)"):
        jax.block_until_ready(stj.topk_loss(x, np.array([0, 4]), 1))
    with pytest.raises(ValueError, match=r"topk_sum: k = 5 is out of range \[0, n = 4\]"):
        stj.topk_sum(x, 5)
