"""sparsetopk.jax on GPU arrays: the host fallback (docs/jax.md, "GPU arrays").

No GPU here, and JAX cannot compile for a GPU platform without one (a host callback
needs the platform's backend even to be lowered), so the fallback is forced onto the
CPU platform through the test hook ``_ffi.host_fallback_on("cpu")``: every
sparsetopk call then lowers to the same jax.pure_callback that a CUDA or ROCm array
gets, which runs the CPU target on the host. Checked: the results equal the plain
CPU target's bit for bit (the callback calls the same handler on the same operands,
so nothing is summed in another order) for every kind of call (forward, forward with
state, JVP and VJP targets, hard ops, top-k sum and loss, Dykstra) under eager, jit,
vmap, grad, jvp and hessian; the warning is given once per process; nothing changes
for CPU users. For the GPU platforms themselves: which platforms take the fallback,
with and without the CUDA opt-in, and that lowering for "cuda" takes it (warning
naming the platform) or, opted in, emits the CUDA targets. Skipped without jax.
"""

import re
import warnings

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import sparsetopk.jax as stj  # noqa: E402
from sparsetopk.jax import _ffi  # noqa: E402

RNG = np.random.default_rng(2107)
X = jnp.asarray(RNG.standard_normal((3, 4, 12)))  # float64
X32 = jnp.asarray(RNG.standard_normal((5, 9)), jnp.float32)
W = jnp.asarray(RNG.standard_normal(X.shape))
TARGET = jnp.asarray(RNG.integers(0, 12, (3, 4)))


def _soft_cases(name, f):
    loss = lambda u, p: jnp.vdot(f(u, 4, 0.3, p), W)  # noqa: E731
    return {
        f"{name} p=4/3": lambda: f(X, 4, 0.3),
        f"{name} p=2 axis=1": lambda: f(X, 2, 0.5, 2.0, axis=1),
        f"{name} float32 jit": lambda: jax.jit(lambda u: f(u, 3, 0.2))(X32),
        f"{name} grad p=4/3": lambda: jax.grad(lambda u: loss(u, 4.0 / 3.0))(X),
        f"{name} jit(grad) p=3": lambda: jax.jit(jax.grad(lambda u: loss(u, 3.0)))(X),
        f"{name} jvp p=4/3": lambda: jax.jvp(lambda u: f(u, 4, 0.3), (X,), (W,)),
        f"{name} vmap axis 1": lambda: jax.jit(jax.vmap(lambda u: f(u, 4, 0.3), in_axes=1, out_axes=1))(X),
        f"{name} vmap(grad)": lambda: jax.jit(jax.vmap(jax.grad(lambda u: jnp.vdot(f(u, 4, 0.3), W[0, 0]))))(X[0]),
        f"{name} jacrev": lambda: jax.jit(jax.jacrev(lambda u: f(u, 4, 0.3)))(X[0, 0]),
        f"{name} hessian p=2": lambda: jax.jit(jax.hessian(lambda u: jnp.sum(f(u, 4, 0.3, 2.0) ** 2)))(X[0, 0]),
        f"{name} dykstra jit(grad)": lambda: jax.jit(jax.grad(
            lambda u: jnp.vdot(f(u, 4, 0.3, 2.0, solver="dykstra", num_iter=50), W)))(X),
    }


CASES = {
    **_soft_cases("soft_topk_mask", stj.soft_topk_mask),
    **_soft_cases("soft_topk_mag", stj.soft_topk_mag),
    "hard_topk_mask": lambda: stj.hard_topk_mask(X, 5),
    "hard_topk_mag jit(grad)": lambda: jax.jit(jax.grad(lambda u: jnp.vdot(stj.hard_topk_mag(u, 5), W)))(X),
    "topk_sum jit": lambda: jax.jit(lambda u: stj.topk_sum(u, 3, 0.2))(X),
    "topk_sum hessian": lambda: jax.jit(jax.hessian(lambda u: stj.topk_sum(u, 3, 0.2)))(X[0, 0]),
    "topk_loss": lambda: stj.topk_loss(X, TARGET, 3),
    "topk_loss vmap(grad)": lambda: jax.jit(jax.vmap(jax.grad(lambda u, t: stj.topk_loss(u, t, 2, 0.5, 2.0))))(
        X[0], TARGET[0]),
    "sparse_soft_topk_mask_pav jit": lambda: jax.jit(lambda u: stj.sparse_soft_topk_mask_pav(u, 4))(X),
    "sparse_soft_topk_mag_dykstra jit": lambda: jax.jit(lambda u: stj.sparse_soft_topk_mag_dykstra(u, 4, num_iter=40))(
        X[0, 0]),
}


def _arrays(value):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(value)]


def _targets(function, *args, platforms=None):
    """The custom call targets of function lowered by jax.jit (for ``platforms``)."""
    lowered = jax.jit(function).trace(*args).lower(lowering_platforms=platforms)
    return re.findall(r"custom_call @(\w+)", lowered.as_text())


@pytest.fixture
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _ffi.HostFallbackWarning)
        yield


def test_the_fallback_gives_the_cpu_targets_numbers_bit_for_bit(quiet, monkeypatch):
    expected = {name: _arrays(case()) for name, case in CASES.items()}
    host_calls = []
    on_host = _ffi._on_host

    def counted(target, *args):
        host_calls.append(target)
        return on_host(target, *args)

    monkeypatch.setattr(_ffi, "_on_host", counted)
    got = {}
    with _ffi.host_fallback_on("cpu"):
        # the fallback is what runs: callbacks, no sparsetopk custom call in the lowered module
        targets = _targets(jax.grad(lambda u: jnp.vdot(stj.soft_topk_mag(u, 4), W)), X)
        assert targets and not any(t.startswith("sparsetopk_") for t in targets)
        assert all("callback" in t for t in targets), targets
        for name, case in CASES.items():
            before = len(host_calls)
            got[name] = _arrays(case())
            assert len(host_calls) > before, f"{name}: nothing ran through the host callback"
    assert {t.rsplit("_", 1)[-1] for t in host_calls} >= {"mask", "mag", "state", "jvp", "vjp", "sum", "loss"}
    for name in CASES:
        assert len(got[name]) == len(expected[name]), name
        for a, b in zip(got[name], expected[name]):
            assert a.dtype == b.dtype and a.shape == b.shape, name
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_the_warning_is_given_once_per_process(monkeypatch):
    monkeypatch.setattr(_ffi, "_warned", False)
    with warnings.catch_warnings(record=True) as caught, _ffi.host_fallback_on("cpu"):
        warnings.simplefilter("always")
        stj.soft_topk_mask(X, 3)
        jax.jit(jax.grad(lambda u: jnp.sum(stj.topk_sum(u, 3))))(X)
        stj.hard_topk_mag(X32, 2)
    ours = [w for w in caught if issubclass(w.category, _ffi.HostFallbackWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    message = str(ours[0].message)
    assert "sparsetopk_soft_topk_mask on a cpu array" in message
    assert "on the host" in message and "copies its operands from the device to the host" in message
    assert "SPARSETOPK_JAX_CUDA_KERNELS=1" in message and "UNVERIFIED" in message


def test_cpu_users_see_no_change(monkeypatch):
    """Without the hook, CPU arrays lower to the custom calls themselves, and no warning."""
    monkeypatch.setattr(_ffi, "_warned", False)
    assert not _ffi.runs_on_host("cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f = lambda u: jnp.vdot(stj.soft_topk_mask(u, 4, 0.25), W)  # noqa: E731
        assert sorted(_targets(jax.grad(f), X)) == ["sparsetopk_soft_topk_mask_vjp",
                                                   "sparsetopk_soft_topk_mask_with_state"]
        jax.block_until_ready(jax.jit(jax.grad(f))(X))
    assert not [w for w in caught if issubclass(w.category, _ffi.HostFallbackWarning)]
    assert not _ffi._warned


def test_which_platforms_take_the_fallback(monkeypatch):
    monkeypatch.setattr(_ffi, "cuda_registered", False)
    assert _ffi.runs_on_host("cuda") and _ffi.runs_on_host("rocm") and not _ffi.runs_on_host("cpu")
    monkeypatch.setattr(_ffi, "cuda_registered", True)  # the opt-in (or, once verified, the default)
    assert not _ffi.runs_on_host("cuda") and _ffi.runs_on_host("rocm")
    assert _ffi.CUDA_KERNELS_VERIFIED is False  # flip only after the CUDA kernels pass on a GPU (docs/jax.md)


def test_lowering_for_cuda(monkeypatch):
    """Lowered for "cuda" (possible here without a GPU, but not with a host callback,
    which needs the platform's backend): opted in, the module calls the CUDA targets,
    as before; otherwise the rule takes the fallback, and warns naming the platform."""
    f = jax.grad(lambda u: jnp.vdot(stj.soft_topk_mag(u, 4, 0.25), W))
    monkeypatch.setattr(_ffi, "cuda_registered", True)
    assert sorted(_targets(f, X, platforms=("cuda",))) == ["sparsetopk_soft_topk_mag_vjp",
                                                          "sparsetopk_soft_topk_mag_with_state"]
    monkeypatch.setattr(_ffi, "cuda_registered", False)
    monkeypatch.setattr(_ffi, "_warned", False)
    jax.clear_caches()  # the module lowered above is cached, and cuda_registered never changes in a process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            targets = _targets(f, X, platforms=("cuda",))
        except ValueError as error:  # jax cannot lower a callback for a backend it does not have
            assert "cuda" in str(error)
        else:
            assert targets and not any(t.startswith("sparsetopk_") for t in targets)
    ours = [str(w.message) for w in caught if issubclass(w.category, _ffi.HostFallbackWarning)]
    assert len(ours) == 1 and "sparsetopk_soft_topk_mag_with_state on a cuda array" in ours[0]


def test_a_missing_cuda_library_is_an_error_on_opt_in_only(monkeypatch, tmp_path):
    """The opt-in without the library fails at import; once CUDA_KERNELS_VERIFIED, a
    missing library only keeps the fallback."""
    monkeypatch.setattr(_ffi, "candidate_paths", lambda *_: [tmp_path / _ffi.CUDA_LIBRARY_NAME])
    monkeypatch.setattr(_ffi, "cuda_registered", False)
    with pytest.raises(ImportError, match="SPARSETOPK_JAX_CUDA_KERNELS=1"):
        _ffi._register_cuda_targets(required=True)
    _ffi._register_cuda_targets(required=False)
    assert not _ffi.cuda_registered
