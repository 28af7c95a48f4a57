"""The table of the PyTorch operators: one entry per public op of ``torch.ops.sparsetopk``.

Everything the Python side lists per operator follows from :data:`OPERATORS`:
``_registration.py`` registers the fake kernel and the vmap rule of each op an
entry implies (for a soft operator also its forward, backward and JVP ops),
``functional.py`` looks up the ops its functions call, and the package's
``__init__.py`` exports the functions by these names. So an operator whose
signature has the shape of these (soft: ``x, k, l, p, dim, solver, num_iter``;
hard: ``x, k, dim``) is one entry here, its public function in
``functional.py`` and its C++ kernels (docs/architecture.md, "An operator's
recipe").

This module imports nothing (``import sparsetopk`` reads it without torch).
"""

from dataclasses import dataclass
from typing import Any, Tuple

# The defaults of the soft ops' schemas after x and k (src/torch/ops.cpp).
L, P, DIM, SOLVER, NUM_ITER = 0.1, 4.0 / 3.0, -1, "auto", None
SOFT_DEFAULTS = (L, P, DIM, SOLVER, NUM_ITER)  # l, p, dim, solver, num_iter
HARD_DEFAULTS = (DIM,)  # dim

# The derivative ops of a soft operator: the product and the name of its first argument, v.
PRODUCTS = (("backward", "grad"), ("jvp", "tangent"))


@dataclass(frozen=True)
class Operator:
    """A public operator: ``torch.ops.sparsetopk.<name>`` and ``sparsetopk.<name>``.

    ``soft``: differentiable, with the ops ``_<name>_forward`` (out and the row
    state), ``_<name>_backward`` and ``_<name>_jvp``, and the signature
    ``(x, k, l, p, dim, solver, num_iter)``; otherwise a hard operator,
    ``(x, k, dim)``, whose autograd is its C++ kernel's.
    """

    name: str
    soft: bool

    @property
    def defaults(self) -> Tuple[Any, ...]:
        """The defaults of the public op's schema, after x and k."""
        return SOFT_DEFAULTS if self.soft else HARD_DEFAULTS

    @property
    def forward(self) -> str:
        """The soft operator's forward op, which also returns the row state."""
        return f"_{self.name}_forward"

    def product(self, product: str) -> str:
        """The soft operator's derivative op: ``product`` is "backward" (J^T v) or "jvp" (J v)."""
        return f"_{self.name}_{product}"


OPERATORS = (
    Operator("soft_topk_mask", soft=True),
    Operator("soft_topk_mag", soft=True),
    Operator("hard_topk_mask", soft=False),
    Operator("hard_topk_mag", soft=False),
)
