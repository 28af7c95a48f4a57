"""One global magnitude budget over a model's chosen parameters, during training.

    pruning = sparsetopk.prune.global_magnitude([(model.fc1, "weight"), (model.fc2, "weight")],
                                                sparsity=0.9, l=1e-3)
    ...train: model.fc1.weight is now the soft top-k of all the chosen weights...
    pruning.remove()   # the hard top-k kept, the rest 0, as plain parameters

Each chosen parameter gets a ``torch.nn.utils.parametrize`` parametrization.
The value of every one depends on all of them (one k over their
concatenation: :func:`sparsetopk.soft_topk_mag_global`), so the
parametrizations share one :class:`GlobalMagnitude`, which solves for all the
parameters the first time one of them is read and hands the others their
part of that solve. A solve is reused while no parameter changed (their
version counters) and no part of it was handed out before: a forward pass
computes the global solve once, not once per parameter, and the next forward
(after an optimizer step, or a second forward for gradient accumulation)
solves again, so each backward has a graph of its own.

``k = round((1 - sparsity) * total)``, total the number of entries of the
chosen parameters (of every process of ``group``: each process passes its own
parameters or shards, docs/global.md).
"""

from typing import Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._global import _group_name, hard_topk_mag_global, soft_topk_mag_global
from ._ops import L as _L, P as _P


class _Part(nn.Module):
    """The parametrization of one chosen parameter: its part of the shared solve."""

    def __init__(self, owner: "GlobalMagnitude", index: int):
        super().__init__()
        self.index = index
        # a plain attribute, not a submodule: the owner is not part of the module tree
        object.__setattr__(self, "_owner", owner)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return self._owner._part(self.index, original)


class GlobalMagnitude:
    """The shared state of :func:`global_magnitude` (see the module's docstring).

    Attributes:
        k: the global budget (entries kept).
        total: the entries of the chosen parameters (over every process of ``group``).
        solves: how many global solves ran (for tests: one per forward pass).
    """

    def __init__(self, parameters: Sequence[Tuple[nn.Module, str]], sparsity: float, l: float, p: float,
                 hard: bool, group):
        self.parameters = list(parameters)
        self.l, self.p, self.hard, self.group = float(l), float(p), bool(hard), group
        self.solves = 0
        self._cache = None  # (key, outputs, handed out: set of indices)
        local = sum(getattr(m, name).numel() for m, name in self.parameters)
        total = torch.tensor([float(local)], dtype=torch.float64)
        if group is not None:
            import torch.distributed as dist
            dist.all_reduce(total, group=group)
        self.total = int(total.item())
        self.k = int(round((1.0 - sparsity) * self.total))
        for index, (module, name) in enumerate(self.parameters):
            parametrize.register_parametrization(module, name, _Part(self, index), unsafe=True)

    def originals(self) -> List[torch.Tensor]:
        """The trained (dense) parameters, in the order given."""
        return [m.parametrizations[name].original for m, name in self.parameters]

    def _key(self, originals):
        return (torch.is_grad_enabled(),) + tuple((id(t), t._version) for t in originals)

    def _solve(self, originals) -> List[torch.Tensor]:
        self.solves += 1
        if self.hard:
            return hard_topk_mag_global(originals, self.k, group=self.group)
        return soft_topk_mag_global(originals, self.k, l=self.l, p=self.p, group=self.group)

    def _part(self, index: int, original: torch.Tensor) -> torch.Tensor:
        originals = self.originals()
        if originals[index] is not original:  # called on another tensor (e.g. parametrize's right_inverse): solve with it
            originals = originals[:index] + [original] + originals[index + 1:]
        key = self._key(originals)
        if self._cache is None or self._cache[0] != key or index in self._cache[2]:
            self._cache = (key, self._solve(originals), set())
        self._cache[2].add(index)
        return self._cache[1][index]

    def remove(self) -> None:
        """Leaves each chosen parameter as a plain parameter holding the hard top-k of all
        of them (the k largest magnitudes kept, the rest 0), like ``torch.nn.utils.prune.remove``."""
        with torch.no_grad():
            kept = hard_topk_mag_global([t.detach() for t in self.originals()], self.k, group=self.group)
        for (module, name), value in zip(self.parameters, kept):
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
            with torch.no_grad():
                getattr(module, name).copy_(value)
        self._cache = None


def global_magnitude(parameters: Iterable[Tuple[nn.Module, str]], sparsity: float, l: float = _L, p: float = _P,
                     hard: bool = False, group: Optional[object] = None) -> GlobalMagnitude:
    """Applies one global budget to ``parameters`` ((module, name) pairs, as
    ``torch.nn.utils.prune.global_unstructured`` takes them) through parametrizations:
    each reads as its part of ``soft_topk_mag_global`` of all of them (``hard=True``:
    ``hard_topk_mag_global``), with ``k = round((1 - sparsity) * total)``.

    Returns the :class:`GlobalMagnitude` shared by the parametrizations; its
    :meth:`~GlobalMagnitude.remove` makes the pruning permanent.
    """
    pairs = list(parameters)
    if not pairs:
        raise ValueError("sparsetopk.prune.global_magnitude: parameters is empty; pass (module, name) pairs")
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], nn.Module)
                and isinstance(pair[1], str)):
            raise TypeError(f"sparsetopk.prune.global_magnitude: parameters[{i}] must be a (module, name) pair, "
                            f"got {pair!r}")
        module, name = pair
        if not isinstance(getattr(module, name, None), torch.Tensor):
            raise ValueError(f"sparsetopk.prune.global_magnitude: parameters[{i}]: {type(module).__name__} has no "
                             f"tensor {name!r}")
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsetopk.prune.global_magnitude: sparsity must be in [0, 1], got sparsity = {sparsity}")
    _group_name(group)  # a ProcessGroup or None
    return GlobalMagnitude(pairs, sparsity, l, p, hard, group)
