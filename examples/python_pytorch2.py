"""sparsetopk with torch.compile and torch.func (README, "PyTorch 2")."""
import torch
from torch.func import jacrev, vmap

import sparsetopk

torch.manual_seed(0)
x = torch.randn(4, 6, dtype=torch.float64)

# torch.compile: one graph, no breaks; forward and backward match eager mode.
def loss_fn(x):
    mask = sparsetopk.soft_topk_mask(x, k=2, l=0.5)
    return (mask * x).sum()

compiled = torch.compile(loss_fn, fullgraph=True)
xg = x.clone().requires_grad_()
compiled(xg).backward()
print("graph breaks:", torch._dynamo.explain(loss_fn)(x).graph_break_count)
print("compiled grad == eager grad:",
      torch.allclose(xg.grad, torch.autograd.grad(loss_fn(x.requires_grad_()), x)[0]))

# torch.func: the exact Jacobian of one row (zero outside the fractional band), batched by vmap
row = x[0].detach()
print("mask:", sparsetopk.soft_topk_mask(row, k=2, l=2.0))
print("Jacobian:\n", jacrev(lambda r: sparsetopk.soft_topk_mask(r, k=2, l=2.0))(row))
per_row = vmap(jacrev(lambda r: sparsetopk.soft_topk_mag(r, k=3, l=0.1)))(x.detach())
print("per-row Jacobians:", tuple(per_row.shape))
