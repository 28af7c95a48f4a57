"""JAX on the GPU, a smoke test that scripts/gpu-check.sh runs (not a pytest module: it needs a GPU backend).

    python tests/python/gpu_jax_smoke.py        # exit status 0 iff every check passed

Asserts that JAX's default backend is the GPU and that the input array lives on
a GPU device, then runs sparsetopk.jax's soft_topk_mask and soft_topk_mag
(p = 4/3 and 2, with their gradients through jax.grad) and hard_topk_mask on
that array, and compares each with the same call on the CPU backend. It passes
whichever path served the GPU array, and prints which: the opt-in CUDA
handlers (SPARSETOPK_JAX_CUDA_KERNELS=1), or the CPU target that GPU arrays
fall back to (announced by a one-time warning).
"""

import sys
import warnings

import numpy as np


def main() -> int:
    import jax
    import jax.numpy as jnp

    print(f"jax {jax.__version__}, default backend {jax.default_backend()}, devices {jax.devices()}")
    if jax.default_backend() != "gpu":
        print("gpu_jax_smoke: FAIL: JAX's default backend is not the GPU (no CUDA plugin, or it failed to load)")
        return 1
    gpu, cpu = jax.devices("gpu")[0], jax.devices("cpu")[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import sparsetopk.jax as sj
        from sparsetopk.jax import _ffi

        rng = np.random.default_rng(0)
        values = rng.standard_normal((64, 200)).astype(np.float32)
        weights = rng.standard_normal((64, 200)).astype(np.float32)
        x_gpu, x_cpu = jax.device_put(values, gpu), jax.device_put(values, cpu)
        assert x_gpu.devices() == {gpu} and gpu.platform == "gpu", x_gpu.devices()

        def cases(x):
            w = jnp.asarray(weights, device=next(iter(x.devices())))
            out = {"hard_topk_mask": sj.hard_topk_mask(x, 5)}
            for p, name in [(4.0 / 3.0, "4/3"), (2.0, "2")]:
                for op in [sj.soft_topk_mask, sj.soft_topk_mag]:
                    out[f"{op.__name__} p={name}"] = op(x, 5, 0.3, p)
                    out[f"grad {op.__name__} p={name}"] = jax.grad(lambda t: jnp.sum(op(t, 5, 0.3, p) * w))(x)
            return out

        got, expected = cases(x_gpu), cases(x_cpu)
        jax.block_until_ready(got)
    notes = sorted({str(w.message).splitlines()[0] for w in caught if "sparsetopk" in str(w.message)})
    if _ffi.cuda_registered:
        path = "the opt-in CUDA handlers (libsparsetopk_jax_cuda.so, SPARSETOPK_JAX_CUDA_KERNELS=1)"
    elif notes:
        path = "the CPU target (GPU arrays fall back to it, with a warning)"
    else:
        path = "the GPU backend's default registration (no CUDA handlers opted in, no fallback warning)"
    print(f"path: {path}")
    for note in notes:
        print(f"warning: {note}")

    failed = 0
    for name, value in got.items():
        devices = {d.platform for d in value.devices()}
        difference = float(np.max(np.abs(np.asarray(value) - np.asarray(expected[name]))))
        # a result on the GPU; on the CPU only where the fallback said so
        close = np.allclose(np.asarray(value), np.asarray(expected[name]), rtol=1e-5, atol=1e-6)
        ok = close and (devices == {"gpu"} or (bool(notes) and devices == {"cpu"}))
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name:26s} on {sorted(devices)}, largest difference from the CPU "
              f"backend {difference:.3g}")
    print(f"gpu_jax_smoke: {len(got) - failed} passed, {failed} failed; path: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as error:  # noqa: BLE001 (the script's one line of verdict, then the traceback)
        print(f"gpu_jax_smoke: FAIL: {type(error).__name__}: {error}")
        raise
