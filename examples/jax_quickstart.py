"""sparsetopk.jax: the exact soft top-k operators in JAX, with jit, vmap and both AD modes.

Run from the repository root after building (the README's set-up):
    PYTHONPATH=python .venv/bin/python examples/jax_quickstart.py
"""

import jax
import jax.numpy as jnp

import sparsetopk.jax as stj

jax.config.update("jax_enable_x64", True)

x = jnp.array([-5.0, -2.0, 3.0, 1.0])
print("soft mask   ", stj.soft_topk_mask(x, k=2, l=0.01))
print("soft mag    ", stj.soft_topk_mag(x, k=2, l=0.01))

# A band: with a larger l the mask is soft near the threshold, still exactly 0 or 1 elsewhere.
y = jnp.array([0.9, 0.1, 0.5, -1.0, 0.45])
f = jax.jit(lambda v: stj.soft_topk_mask(v, k=2, l=0.5))
print("mask l=0.5  ", f(y))
print("jacobian    \n", jax.jacrev(f)(y))
print("jvp         ", jax.jvp(f, (y,), (jnp.arange(5.0),))[1])  # J @ [0, 1, 2, 3, 4]

# A batch of router logits: one custom call for all rows, also under vmap.
logits = jax.random.normal(jax.random.key(0), (3, 8))
gates = jax.vmap(lambda row: stj.soft_topk_mag(row, k=2, l=0.1, p=2.0))(logits)
print("nonzeros/row", (gates != 0).sum(axis=-1))

# The top-k loss: 0 where the label is safely among the top k, with a sparse gradient.
scores = jnp.array([[2.0, 1.5, 0.2, -1.0], [0.1, 0.3, 2.5, 1.0]])
labels = jnp.array([1, 0])
print("topk_loss   ", stj.topk_loss(scores, labels, k=2, l=0.5))
print("its grad    \n", jax.grad(lambda s: stj.topk_loss(s, labels, k=2, l=0.5).sum())(scores))

# The reference implementation's names work unchanged.
print("reference   ", stj.sparse_soft_topk_mask_pav(x, k=2, l=1e-2))
