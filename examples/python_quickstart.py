"""The README's Python example: run from the repository root after the build with
PYTHONPATH=python /usr/bin/python3 examples/python_quickstart.py"""
import torch

import sparsetopk

x = torch.tensor([[-5.0, -2.0, 3.0, 1.0],
                  [0.8, 1.2, -0.4, 1.0]], requires_grad=True)
mask = sparsetopk.soft_topk_mask(x, k=2, l=0.5)   # per row: in [0, 1], sums to 2, sparse
print(mask)
mask[1, 3].backward()                              # exact gradient: only the fractional entries interact
print(x.grad)
print(sparsetopk.soft_topk_mag(x.detach(), k=2, l=0.01))

torch.manual_seed(0)
layer = sparsetopk.SparseLinear(64, 16, density=0.1)     # keeps 102 of 1024 weights
y = layer(torch.randn(8, 64))
print(y.shape, layer.kept, round(layer.sparsity(), 3), layer.to_sparse()._nnz())

router = sparsetopk.SoftTopKRouter(d_model=64, num_experts=8, k=2)
gates, expert_indices, expert_mask = router(torch.randn(4, 64))
print(gates)
print(expert_indices)
