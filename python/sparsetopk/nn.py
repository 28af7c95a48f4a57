"""torch.nn modules built on the soft top-k operators."""

import math
from typing import NamedTuple, Optional

import torch
from torch import nn
from torch.nn import functional as F

from .functional import REDUCTIONS, hard_topk_mag, soft_topk_mag, soft_topk_mask, topk_loss


def _check_l_p(owner: str, l: float, p: float) -> None:
    if not (math.isfinite(l) and l > 0):
        raise ValueError(f"sparsetopk.{owner}: l must be finite and > 0, got l = {l}")
    if not (math.isfinite(p) and p > 1):
        raise ValueError(f"sparsetopk.{owner}: p must be finite and > 1, got p = {p}")


class _SoftTopKModule(nn.Module):
    """The options shared by :class:`SoftTopKMask` and :class:`SoftTopKMagnitude`."""

    def __init__(self, k: int, l: float = 0.1, p: float = 4.0 / 3.0, dim: int = -1, solver: str = "auto",
                 num_iter: Optional[int] = None):
        super().__init__()
        _check_l_p(type(self).__name__, l, p)
        self.k = int(k)
        self.l = float(l)
        self.p = float(p)
        self.dim = int(dim)
        self.solver = str(solver)
        self.num_iter = None if num_iter is None else int(num_iter)

    def extra_repr(self) -> str:
        text = f"k={self.k}, l={self.l}, p={self.p}, dim={self.dim}, solver={self.solver!r}"
        return text if self.num_iter is None else f"{text}, num_iter={self.num_iter}"


class SoftTopKMask(_SoftTopKModule):
    """``y = soft_topk_mask(x, k, l, p, dim, solver, num_iter)``: a soft, sparse selection of the k largest entries.

    See :func:`sparsetopk.soft_topk_mask`. No parameters.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return soft_topk_mask(x, self.k, self.l, self.p, self.dim, self.solver, self.num_iter)


class SoftTopKMagnitude(_SoftTopKModule):
    """``y = soft_topk_mag(x, k, l, p, dim, solver, num_iter)``: keeps the k largest-magnitude entries, softly.

    See :func:`sparsetopk.soft_topk_mag`. No parameters.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return soft_topk_mag(x, self.k, self.l, self.p, self.dim, self.solver, self.num_iter)


class TopKLoss(nn.Module):
    """``loss = topk_loss(scores, target, k, l, p, dim, reduction)``: a loss for top-k accuracy.

    0 where the label is safely among the ``k`` best scores; see
    :func:`sparsetopk.topk_loss`. No parameters.
    """

    def __init__(self, k: int, l: float = 0.1, p: float = 4.0 / 3.0, reduction: str = "mean", dim: int = -1):
        super().__init__()
        _check_l_p("TopKLoss", l, p)
        if int(k) < 1:
            raise ValueError(f"sparsetopk.TopKLoss: k must be >= 1, got k = {k}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"sparsetopk.TopKLoss: reduction = {reduction!r} is not one of 'mean', 'sum', 'none'")
        self.k = int(k)
        self.l = float(l)
        self.p = float(p)
        self.reduction = reduction
        self.dim = int(dim)

    def forward(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return topk_loss(scores, target, self.k, self.l, self.p, self.dim, self.reduction)

    def extra_repr(self) -> str:
        return f"k={self.k}, l={self.l}, p={self.p}, reduction={self.reduction!r}, dim={self.dim}"


class SparseLinear(nn.Module):
    """A linear layer whose weight is sparsified by soft top-k in magnitude.

    ``y = x W_s^T + b`` with ``W_s = soft_topk_mag(W, k, l, p)`` taken over all
    weights of the layer (``per="layer"``) or over each output row
    (``per="row"``). ``k = floor(density * count + 1/2)`` with ``count`` the
    number of weights in the layer or in a row. ``W`` is the dense trained
    parameter; ``W_s`` keeps the large weights unchanged, is exactly zero on the
    small ones and shrinks a band of width about ``l`` around the k-th magnitude,
    through which gradients let weights enter or leave the kept set. Weights
    below the band get no gradient (their output is exactly 0): they come back
    only when the kept weights shrink, so ``l`` trades exploration for sparsity.

    Args:
        in_features, out_features: as :class:`torch.nn.Linear`.
        density: fraction of the weights kept, in [0, 1].
        per: ``"layer"`` or ``"row"``.
        l: regularization strength, in the units of the weights (which start in
            ``+-1/sqrt(in_features)``); the default 0.01 keeps the band narrow.
        p: norm of the regularizer, ``p > 1``.
        bias: whether to add a (dense) bias.

    ``weight`` and ``bias`` are initialized as in :class:`torch.nn.Linear`. For
    deployment, :meth:`hard_pruned_weight` / :meth:`to_sparse` export the hard
    top-k weight with exactly ``kept`` non-zeros per layer or row.

    With ``group`` (a ``torch.distributed`` process group; ``per="layer"``
    only), the layer is split by output rows over the group's processes (tensor
    parallelism: ``out_features`` is this process's share, any sizes, 0
    included) and one budget covers the whole layer:
    ``kept = floor(density * count + 1/2)`` with ``count`` every process's
    weights (one all-reduce when the layer is built: every process of the
    group builds it together), and ``W_s`` is this process's part of
    :func:`sparsetopk.soft_topk_mag_global` over every process's weight, in
    rank order; its gradient is exact for each part. ``hard_pruned_weight``
    is the part of :func:`sparsetopk.hard_topk_mag_global` (``kept``
    non-zeros between the processes); :meth:`sparsity` is this process's.
    """

    def __init__(self, in_features: int, out_features: int, density: float = 0.1, per: str = "layer",
                 l: float = 0.01, p: float = 4.0 / 3.0, bias: bool = True,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None,
                 group: Optional[object] = None):
        super().__init__()
        if in_features < 0 or out_features < 0:
            raise ValueError(f"sparsetopk.SparseLinear: in_features = {in_features} and "
                             f"out_features = {out_features} must be >= 0")
        if not 0.0 <= density <= 1.0:
            raise ValueError(f"sparsetopk.SparseLinear: density must be in [0, 1], got density = {density}")
        if per not in ("layer", "row"):
            raise ValueError(f"sparsetopk.SparseLinear: per must be 'layer' or 'row', got per = {per!r}")
        _check_l_p("SparseLinear", l, p)
        if group is not None and per != "layer":
            raise ValueError(f"sparsetopk.SparseLinear: group= needs per='layer' (a row's budget is "
                             f"within one process), got per = {per!r}")
        self.group = group
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.density = float(density)
        self.per = per
        self.l = float(l)
        self.p = float(p)
        count = self.in_features if per == "row" else self.in_features * self.out_features
        if group is not None:  # the whole layer's weights, over the group's processes
            import torch.distributed as dist

            from ._global import _group_name

            _group_name(group)  # (a TypeError naming group= for anything but a ProcessGroup)

            total = torch.tensor([count], dtype=torch.int64)
            dist.all_reduce(total, group=group)
            count = int(total.item())
        self.kept = int(math.floor(self.density * count + 0.5))
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initializes ``weight`` and ``bias`` as :class:`torch.nn.Linear` does."""
        if self.weight.numel() > 0:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None and self.bias.numel() > 0:
            bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    def effective_weight(self) -> torch.Tensor:
        """``W_s``, the soft-pruned weight the forward pass uses (differentiable)."""
        if self.per == "row":
            return soft_topk_mag(self.weight, self.kept, self.l, self.p, 1)
        if self.group is not None:
            return self._weight_over_group(hard=False)
        return soft_topk_mag(self.weight.reshape(-1), self.kept, self.l, self.p).view_as(self.weight)

    @torch.jit.unused
    def _weight_over_group(self, hard: bool) -> torch.Tensor:
        """This process's part of the soft (or hard) top-k of the layer's weight over the group
        (not in TorchScript: a module with a group is not scriptable)."""
        from ._global import hard_topk_mag_global, soft_topk_mag_global

        if hard:
            return hard_topk_mag_global([self.weight], self.kept, group=self.group)[0]
        return soft_topk_mag_global([self.weight], self.kept, self.l, self.p, group=self.group)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    @torch.no_grad()
    def hard_pruned_weight(self) -> torch.Tensor:
        """``hard_topk_mag(W, kept)`` per layer or row: exactly ``kept`` non-zeros per group
        (fewer only where ``W`` itself is 0). Dense, detached."""
        if self.per == "row":
            return hard_topk_mag(self.weight, self.kept, 1)
        if self.group is not None:
            return self._weight_over_group(hard=True)
        return hard_topk_mag(self.weight.reshape(-1), self.kept).view_as(self.weight)

    def to_sparse(self) -> torch.Tensor:
        """:meth:`hard_pruned_weight` as a coalesced sparse COO tensor."""
        return self.hard_pruned_weight().to_sparse().coalesce()

    @torch.no_grad()
    def sparsity(self) -> float:
        """Fraction of exactly-zero entries of :meth:`effective_weight`."""
        w = self.effective_weight()
        return float((w == 0).sum()) / w.numel() if w.numel() > 0 else 0.0

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, density={self.density}, "
                f"per={self.per!r}, kept={self.kept}, l={self.l}, p={self.p}, bias={self.bias is not None}"
                + ("" if self.group is None else ", group=..."))


class RouterOutput(NamedTuple):
    """What :class:`SoftTopKRouter` returns.

    gates: ``(..., num_experts)``, >= 0, exactly 0 for the experts a token does not use.
    expert_indices: ``(..., m)`` int64, the experts each token uses (non-zero gate),
        largest gate first, padded with -1; ``m`` is the count of the busiest token in eager
        mode, and ``num_experts`` under ``torch.compile`` and ``torch.export`` (a data-dependent
        width would break the graph).
    expert_mask: ``(..., num_experts)`` bool, ``gates != 0``.
    """

    gates: torch.Tensor
    expert_indices: torch.Tensor
    expert_mask: torch.Tensor


def expert_capacity(k: int, num_experts: int, tokens: int) -> int:
    """Expert choice: tokens per expert, ``clamp(round(k * tokens / num_experts), 1, tokens)``
    (0 for no tokens), so that a token gets ``k`` experts on average."""
    if tokens == 0:
        return 0
    return min(max(int(math.floor(k * tokens / num_experts + 0.5)), 1), tokens)


class SoftTopKRouter(nn.Module):
    """Mixture-of-experts router with sparse, differentiable top-k gates.

    ``z = x A^T`` (a bias-free linear map to ``num_experts`` logits), then
    ``m = soft_topk_mask(z, k, l, p)`` over the experts: ``m`` sums to ``k``, is
    exactly 0 for experts outside the top k and 1 for clear winners. The gates
    are, with ``normalize=True`` (default), ``g = m * softmax(z) / sum(m * softmax(z))``
    (the softmax gates of a top-k router, restricted softly to the selected
    experts; rows sum to 1, and the router gets a gradient even when the mask is
    saturated), or with ``normalize=False`` the mask itself, ``g = m``.

    A token uses exactly ``k`` experts unless some logits sit within about ``l``
    of its k-th largest logit; there the mask is fractional and a few more
    experts share the load, which is what makes the selection differentiable.

    With ``choice="expert"`` (expert choice) each expert picks tokens instead:
    ``m[:, e] = soft_topk_mask(z[:, e], c, l, p)`` along the tokens (every leading
    dim of ``x`` flattened), with capacity ``c = expert_capacity(k, num_experts,
    tokens)``, so ``k`` is the mean number of experts per token. The gates are
    ``m * softmax(z)`` with ``normalize=True`` (not renormalized: a token may get
    no expert), else ``m``. A token's routing depends on the other tokens. With
    ``group`` (a ``torch.distributed`` process group) the tokens are those of
    every process together, in rank order: ``tokens`` counts all of them and each
    expert's top-k is :func:`sparsetopk.soft_topk_mask_global` over the group, so
    each process gets the gates of its own tokens, equal to one process routing
    the concatenated tokens.

    Args:
        d_model: size of the token features (last dim of the input).
        num_experts: number of experts.
        k: experts per token, ``1 <= k <= num_experts``.
        l, p: as :func:`sparsetopk.soft_topk_mask`.
        normalize: see above.
        choice: ``"token"`` (default) or ``"expert"``, see above.
        group: expert choice only: a process group whose tokens compete together.

    Returns:
        :class:`RouterOutput` ``(gates, expert_indices, expert_mask)``.
    """

    def __init__(self, d_model: int, num_experts: int, k: int, l: float = 0.1, p: float = 4.0 / 3.0,
                 normalize: bool = True, device: Optional[torch.device] = None,
                 dtype: Optional[torch.dtype] = None, choice: str = "token", group: Optional[object] = None):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"sparsetopk.SoftTopKRouter: num_experts must be >= 1, got num_experts = {num_experts}")
        if not 1 <= k <= num_experts:
            raise ValueError(f"sparsetopk.SoftTopKRouter: k = {k} is out of range [1, num_experts = {num_experts}]")
        _check_l_p("SoftTopKRouter", l, p)
        if choice not in ("token", "expert"):
            raise ValueError(f"sparsetopk.SoftTopKRouter: choice = {choice!r} is neither 'token' nor 'expert'")
        if group is not None and choice != "expert":
            raise ValueError("sparsetopk.SoftTopKRouter: group= needs choice='expert' (token choice is per token)")
        self.choice = choice
        self.group = group
        self.d_model = int(d_model)
        self.num_experts = int(num_experts)
        self.k = int(k)
        self.l = float(l)
        self.p = float(p)
        self.normalize = bool(normalize)
        self.gate = nn.Linear(self.d_model, self.num_experts, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> RouterOutput:
        logits = self.gate(x)
        if self.choice == "expert":
            mask = self._expert_choice_mask(logits)
            gates = mask * torch.softmax(logits, dim=-1) if self.normalize else mask
            return self._output(gates)
        mask = soft_topk_mask(logits, self.k, self.l, self.p)
        if self.normalize:
            weighted = mask * torch.softmax(logits, dim=-1)
            gates = weighted / weighted.sum(dim=-1, keepdim=True)
        else:
            gates = mask
        return self._output(gates)

    def _expert_choice_mask(self, logits: torch.Tensor) -> torch.Tensor:
        flat = logits.reshape(-1, self.num_experts)
        tokens = flat.shape[0]
        if self.group is None:
            capacity = expert_capacity(self.k, self.num_experts, tokens)
            return soft_topk_mask(flat, capacity, self.l, self.p, dim=0).reshape(logits.shape)
        import torch.distributed as dist

        from ._global import soft_topk_mask_global

        count = torch.tensor([tokens], dtype=torch.int64)
        dist.all_reduce(count, group=self.group)
        capacity = expert_capacity(self.k, self.num_experts, int(count.item()))
        columns = [soft_topk_mask_global([flat[:, e].contiguous()], capacity, self.l, self.p, group=self.group)[0]
                   for e in range(self.num_experts)]
        return torch.stack(columns, dim=1).reshape(logits.shape)

    def _output(self, gates: torch.Tensor) -> RouterOutput:
        expert_mask = gates != 0
        if torch.compiler.is_compiling():  # torch.compile / torch.export: a static width, no graph break
            used = self.num_experts
        else:
            used = int(expert_mask.sum(dim=-1).max()) if expert_mask.numel() > 0 else 0
        top_gates, order = torch.sort(gates.detach(), dim=-1, descending=True, stable=True)
        expert_indices = order.narrow(-1, 0, used).masked_fill(top_gates.narrow(-1, 0, used) == 0, -1)
        return RouterOutput(gates, expert_indices, expert_mask)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_experts={self.num_experts}, k={self.k}, l={self.l}, "
                f"p={self.p}, normalize={self.normalize}, choice={self.choice!r}")
