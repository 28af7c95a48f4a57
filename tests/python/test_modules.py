"""The nn.Modules: values, exports, TorchScript, and short training loops."""

import pytest
import torch
from torch import nn

import sparsetopk


def train(model, loss_fn, steps=150, lr=0.05):
    """Adam on loss_fn(); returns (first loss, last loss)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


# ---- SoftTopKMask / SoftTopKMagnitude ----

def test_soft_topk_mask_module():
    module = sparsetopk.SoftTopKMask(2, l=0.01)
    x = torch.tensor([[-5.0, -2.0, 3.0, 1.0]])
    assert module(x).tolist() == [[0, 0, 1, 1]]
    assert "k=2" in repr(module) and "l=0.01" in repr(module)
    assert torch.equal(sparsetopk.SoftTopKMask(1, 0.5, 2.0, dim=0)(x.t()), sparsetopk.soft_topk_mask(x.t(), 1, 0.5, 2.0, 0))


def test_soft_topk_magnitude_module():
    module = sparsetopk.SoftTopKMagnitude(2, l=0.01)
    assert module(torch.tensor([-5.0, -2.0, 3.0, 1.0])).tolist() == [-5, 0, 3, 0]


def test_module_argument_errors():
    with pytest.raises(ValueError, match="l must be finite and > 0, got l = 0"):
        sparsetopk.SoftTopKMask(2, l=0.0)
    with pytest.raises(ValueError, match="p must be finite and > 1, got p = 1"):
        sparsetopk.SoftTopKMagnitude(2, p=1.0)
    with pytest.raises(RuntimeError, match=r"k = 5 is out of range \[0, n = 4\]"):
        sparsetopk.SoftTopKMask(5)(torch.zeros(4))


def test_training_through_soft_topk_mask():
    # learn scores whose soft top-3 mask matches a target selection
    torch.manual_seed(0)
    scores = nn.Parameter(0.1 * torch.randn(10))
    target = torch.zeros(10)
    target[[1, 4, 7]] = 1
    module = sparsetopk.SoftTopKMask(3, l=1.0)
    holder = nn.ParameterList([scores])
    first, last = train(holder, lambda: ((module(scores) - target) ** 2).sum())
    assert last < 0.1 * first
    assert sparsetopk.hard_topk_mask(scores.detach(), 3).nonzero().flatten().tolist() == [1, 4, 7]


def test_training_through_soft_topk_magnitude():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = x[:, :1] * 2.0 - x[:, 1:2]
    model = nn.Sequential(nn.Linear(8, 16), sparsetopk.SoftTopKMagnitude(4, l=0.1), nn.Linear(16, 1))
    first, last = train(model, lambda: ((model(x) - y) ** 2).mean(), steps=200, lr=0.02)
    assert last < 0.2 * first


# ---- SparseLinear ----

@pytest.mark.parametrize("per", ["layer", "row"])
def test_sparse_linear_forward_and_exports(per):
    torch.manual_seed(0)
    layer = sparsetopk.SparseLinear(20, 6, density=0.25, per=per)
    assert layer.kept == (5 if per == "row" else 30)
    x = torch.randn(3, 20)
    w = layer.effective_weight()
    torch.testing.assert_close(layer(x), x @ w.t() + layer.bias)
    if per == "row":
        torch.testing.assert_close(w, sparsetopk.soft_topk_mag(layer.weight, 5, 0.01, dim=1))
    else:
        torch.testing.assert_close(w.flatten(), sparsetopk.soft_topk_mag(layer.weight.flatten(), 30, 0.01))
    assert 0.5 < layer.sparsity() < 0.8  # about 1 - density: the soft band keeps a few more
    hard = layer.hard_pruned_weight()
    assert not hard.requires_grad
    if per == "row":
        assert ((hard != 0).sum(1) == 5).all()
    else:
        assert int((hard != 0).sum()) == 30
    sparse = layer.to_sparse()
    assert sparse.is_sparse and sparse.is_coalesced() and sparse._nnz() == int((hard != 0).sum())
    assert torch.equal(sparse.to_dense(), hard)
    # the kept hard weights are the original ones
    assert torch.equal(hard[hard != 0], layer.weight.detach()[hard != 0])


def test_sparse_linear_arguments():
    with pytest.raises(ValueError, match="density must be in"):
        sparsetopk.SparseLinear(4, 4, density=1.5)
    with pytest.raises(ValueError, match="per must be 'layer' or 'row'"):
        sparsetopk.SparseLinear(4, 4, per="column")
    layer = sparsetopk.SparseLinear(4, 3, density=1.0, bias=False)
    assert layer.bias is None and layer.kept == 12
    torch.testing.assert_close(layer.effective_weight(), layer.weight)
    assert sparsetopk.SparseLinear(4, 3, density=0.0).effective_weight().abs().sum() == 0
    assert "per='layer'" in repr(layer)


def test_sparse_linear_dtype_and_device_arguments():
    layer = sparsetopk.SparseLinear(5, 2, dtype=torch.float64)
    assert layer.weight.dtype == torch.float64
    assert layer(torch.randn(3, 5, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("per", ["layer", "row"])
def test_training_through_sparse_linear(per):
    # a sparse teacher: the loss goes down with exact zeros in the weight, and the
    # hard-pruned export does about as well as the soft weight it was trained with.
    # (Weights outside the kept set and its soft band get no gradient, so the
    # student need not find the teacher's support in a few steps.)
    torch.manual_seed(1)
    teacher = torch.zeros(4, 16)
    teacher[torch.arange(4), torch.tensor([0, 5, 9, 14])] = 1.0
    teacher[torch.arange(4), torch.tensor([3, 3, 12, 1])] = -0.5
    x = torch.randn(256, 16)
    y = x @ teacher.t()
    layer = sparsetopk.SparseLinear(16, 4, density=0.125, per=per, bias=False)
    first, last = train(layer, lambda: ((layer(x) - y) ** 2).mean(), steps=300, lr=0.02)
    assert last < 0.6 * first
    assert layer.sparsity() > 0.7
    pruned = x @ layer.hard_pruned_weight().t()
    assert ((pruned - y) ** 2).mean() < 1.05 * last


def test_torchscript_modules():
    torch.manual_seed(0)
    x = torch.randn(3, 10)
    for module in [sparsetopk.SoftTopKMask(3), sparsetopk.SoftTopKMagnitude(3, 0.2, 2.0),
                   sparsetopk.SparseLinear(10, 4, density=0.3), sparsetopk.SparseLinear(10, 4, per="row")]:
        scripted = torch.jit.script(module)
        assert torch.equal(scripted(x), module(x))


# ---- SoftTopKRouter ----

def test_router_outputs():
    torch.manual_seed(0)
    router = sparsetopk.SoftTopKRouter(d_model=8, num_experts=6, k=2, l=0.1)
    x = torch.randn(32, 8)
    out = router(x)
    assert isinstance(out, sparsetopk.RouterOutput)
    gates, indices, mask = out
    assert gates.shape == (32, 6) and mask.shape == (32, 6) and mask.dtype == torch.bool
    torch.testing.assert_close(gates.sum(-1), torch.ones(32))
    assert torch.equal(mask, gates != 0)
    assert ((mask.sum(-1) >= 2)).all()
    assert indices.dtype == torch.int64 and indices.shape == (32, int(mask.sum(-1).max()))
    for t in range(32):
        used = indices[t][indices[t] >= 0]
        assert sorted(used.tolist()) == mask[t].nonzero().flatten().tolist()
        assert (gates[t, used][:-1] >= gates[t, used][1:]).all()  # largest gate first
    # the k largest logits are used
    logits = router.gate(x)
    top = logits.topk(2, dim=-1).indices
    assert mask.gather(-1, top).all()


def test_router_mask_gates_and_batch_shapes():
    router = sparsetopk.SoftTopKRouter(4, 5, k=3, normalize=False)
    x = torch.randn(2, 7, 4)
    gates, indices, mask = router(x)
    assert gates.shape == (2, 7, 5) and indices.shape[:2] == (2, 7)
    torch.testing.assert_close(gates, sparsetopk.soft_topk_mask(router.gate(x), 3, 0.1))
    torch.testing.assert_close(gates.sum(-1), torch.full((2, 7), 3.0))
    empty = router(torch.empty(0, 4))
    assert empty.gates.shape == (0, 5) and empty.expert_indices.shape == (0, 0)


def test_router_arguments():
    with pytest.raises(ValueError, match=r"k = 0 is out of range \[1, num_experts = 4\]"):
        sparsetopk.SoftTopKRouter(8, 4, 0)
    with pytest.raises(ValueError, match=r"k = 5 is out of range"):
        sparsetopk.SoftTopKRouter(8, 4, 5)


@pytest.mark.parametrize("normalize", [True, False])
def test_training_through_router(normalize):
    # a tiny mixture of experts: tokens from 4 clusters, each best served by one expert
    torch.manual_seed(0)
    centers = torch.randn(4, 8) * 3
    labels = torch.randint(0, 4, (256,))
    x = centers[labels] + 0.3 * torch.randn(256, 8)
    targets = torch.tensor([1.0, -1.0, 2.0, -2.0])[labels].unsqueeze(-1)
    router = sparsetopk.SoftTopKRouter(8, 4, k=1, l=0.5, normalize=normalize)
    experts = nn.Parameter(torch.zeros(4))  # expert e outputs the constant experts[e]
    model = nn.ModuleDict({"router": router})
    model.register_parameter("experts", experts)

    def loss():
        gates = router(x).gates
        return ((gates @ experts.unsqueeze(-1) - targets) ** 2).mean()

    first, last = train(model, loss, steps=300, lr=0.05)
    assert last < 0.2 * first
    gates = router(x).gates
    assert (gates == 0).float().mean() > 0.5  # sparse routing
