"""The smoothed top-k sum and the top-k loss (SPEC.md; docs/losses.md)."""
import torch

import sparsetopk

x = torch.tensor([[2.0, 1.5, 0.2, -1.0], [0.1, 0.3, 2.5, 1.0]], dtype=torch.float64, requires_grad=True)
target = torch.tensor([1, 0])  # row 0: label among the top 2; row 1: label ranked last

print("topk_sum:", sparsetopk.topk_sum(x, k=2, l=0.5))
losses = sparsetopk.topk_loss(x, target, k=2, l=0.5, reduction="none")
print("topk_loss:", losses)
losses.sum().backward()
print("gradient (sums to 0 per row, sparse):\n", x.grad)
criterion = sparsetopk.TopKLoss(k=2, l=0.5)
print(criterion, "->", criterion(x, target))
