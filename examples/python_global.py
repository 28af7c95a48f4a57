"""One top-k over several tensors: the global operators and the pruning utility.

    PYTHONPATH=python python examples/python_global.py
"""

import torch
from torch import nn

import sparsetopk
import sparsetopk.prune

a = torch.tensor([[0.9, -0.1], [0.3, 2.0]])
b = torch.tensor([-1.5, 0.05, 0.6])
# k = 3 over all 7 entries: 2.0, -1.5 and 0.9 lead; 0.9 and 0.6 share a band around the 3rd magnitude
print(sparsetopk.soft_topk_mag_global([a, b], k=3, l=0.5))
print(sparsetopk.hard_topk_mag_global([a, b], k=3))

# one budget over a model's weights, during training; remove() keeps the hard top-k
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
pruning = sparsetopk.prune.global_magnitude([(model[0], "weight"), (model[2], "weight")], sparsity=0.75, l=0.01)
print("k =", pruning.k, "of", pruning.total, "| non-zeros per layer:", [int((m.weight != 0).sum()) for m in model[::2]])
pruning.remove()
print("after remove():", [int((m.weight != 0).sum()) for m in model[::2]])
