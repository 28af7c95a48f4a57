"""The names and signatures of the paper's JAX reference implementation
(``sparse_soft_topk``), so that replacing its import is enough. Differences
are listed in docs/jax.md: our results are exact for every p, every function
takes arrays of any shape (along the last axis), and float64 works.
"""

import jax

from ._operators import soft_topk_mag, soft_topk_mask


def sparse_soft_topk_mask_pav(x, k: int, l: float = 1e-1, p: float = 4.0 / 3.0,
                              bisect_max_iter: int = 50) -> jax.Array:
    """The reference's soft top-k mask (last axis). ``bisect_max_iter`` is accepted
    and unused: the core solves every block exactly, for every p."""
    del bisect_max_iter
    return soft_topk_mask(x, k, l, p)


def sparse_soft_topk_mag_pav(x, k: int, l: float = 1e-1, p: float = 4.0 / 3.0,
                             bisect_max_iter: int = 50) -> jax.Array:
    """The reference's soft top-k in magnitude (last axis); exact for every p
    (the reference's results are wrong for p other than 2 and 4/3)."""
    del bisect_max_iter
    return soft_topk_mag(x, k, l, p)


def _dykstra_iterations(num_iter: int) -> int:
    # The reference counts alternate steps: num_iter // 2 iterations over both sets of pairs.
    return max(1, int(num_iter) // 2)


def sparse_soft_topk_mask_dykstra(x, k: int, l: float = 1e-1, num_iter: int = 500) -> jax.Array:
    """The reference's Dykstra soft top-k mask (p = 2): the same iteration in the
    C++ core, batched over the last axis, differentiated with the exact block
    Jacobian at the solution it returns."""
    return soft_topk_mask(x, k, l, 2.0, solver="dykstra", num_iter=_dykstra_iterations(num_iter))


def sparse_soft_topk_mag_dykstra(x, k: int, l: float = 1e-1, num_iter: int = 500) -> jax.Array:
    """The reference's Dykstra soft top-k in magnitude (p = 2); see
    :func:`sparse_soft_topk_mask_dykstra`."""
    return soft_topk_mag(x, k, l, 2.0, solver="dykstra", num_iter=_dykstra_iterations(num_iter))
