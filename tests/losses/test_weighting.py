"""Tests for d3epth.losses.weighting (uncertainty, DWA, GradNorm, fixed) and d3epth.losses.hybrid."""

import math

import pytest
import torch
from torch import nn

from d3epth.losses.gradient import gradient_huber_loss
from d3epth.losses.hybrid import HybridDepthLoss
from d3epth.losses.ssi import ssi_loss
from d3epth.losses.weighting import (
    DynamicWeightAverage,
    FixedWeighting,
    GradNormWeighting,
    UncertaintyWeighting,
    build_weighting,
    resolve_shared_parameters,
)

TASKS = ("ssi", "grad")


def _losses(a: float, b: float) -> dict[str, torch.Tensor]:
    return {"ssi": torch.tensor(a), "grad": torch.tensor(b)}


# ------------------------------------------------------------------------------------------------- uncertainty


def test_uncertainty_formula() -> None:
    weighting = UncertaintyWeighting(TASKS)
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([0.3, -0.2]))
    expected = 0.5 * math.exp(-0.3) * 1.0 + 0.15 + 0.5 * math.exp(0.2) * 2.0 - 0.1
    assert float(weighting(_losses(1.0, 2.0)).detach()) == pytest.approx(expected, rel=1e-6)
    weights = weighting.weights()
    assert float(weights["ssi"]) == pytest.approx(0.5 * math.exp(-0.3), rel=1e-6)
    assert float(weights["grad"]) == pytest.approx(0.5 * math.exp(0.2), rel=1e-6)


def test_uncertainty_learns_inverse_loss_magnitudes() -> None:
    weighting = UncertaintyWeighting(TASKS)
    for _ in range(200):  # plain gradient descent on s
        weighting.zero_grad()
        weighting(_losses(1.0, 10.0)).backward()
        with torch.no_grad():
            weighting.log_vars -= 0.2 * weighting.log_vars.grad
    # the optimum is s_i = log L_i, so e^{-s_ssi} / e^{-s_grad} = L_grad / L_ssi = 10
    ratio = float(torch.exp(weighting.log_vars[1] - weighting.log_vars[0]).detach())
    assert ratio == pytest.approx(10.0, rel=0.05)
    weights = weighting.weights()
    assert float(weights["ssi"] / weights["grad"]) == pytest.approx(10.0, rel=0.05)


def test_uncertainty_parameters_go_without_weight_decay() -> None:
    weighting = UncertaintyWeighting(TASKS)
    assert weighting.no_weight_decay_parameters() == [weighting.log_vars]
    (group,) = weighting.param_groups(lr=1e-2)
    assert group["weight_decay"] == 0.0 and group["lr"] == 1e-2 and group["params"] == [weighting.log_vars]
    assert DynamicWeightAverage(TASKS).param_groups(lr=1.0) == []


# ---------------------------------------------------------------------------------------------------------- DWA


def test_dwa_reproduces_formula_on_history() -> None:
    weighting = DynamicWeightAverage(TASKS, temperature=2.0, window=1)
    history = [(1.0, 2.0), (0.5, 1.8), (0.4, 1.0)]
    # weights are 1 until two history entries exist
    assert float(weighting(_losses(*history[0]))) == pytest.approx(3.0)
    assert float(weighting(_losses(*history[1]))) == pytest.approx(2.3)
    # now w = L(t-1) / L(t-2) = (0.5 / 1, 1.8 / 2) and lambda = K softmax(w / T)
    e_ssi, e_grad = math.exp(0.5 / 2), math.exp(0.9 / 2)
    lam = (2 * e_ssi / (e_ssi + e_grad), 2 * e_grad / (e_ssi + e_grad))
    weights = weighting.weights()
    assert float(weights["ssi"]) == pytest.approx(lam[0], rel=1e-6)
    assert float(weights["grad"]) == pytest.approx(lam[1], rel=1e-6)
    assert float(weighting(_losses(*history[2]))) == pytest.approx(lam[0] * 0.4 + lam[1] * 1.0, rel=1e-6)


def test_dwa_window_averages_and_eval_does_not_record() -> None:
    weighting = DynamicWeightAverage(TASKS, window=2)
    for values in [(1.0, 1.0), (3.0, 1.0), (1.0, 2.0), (1.0, 4.0)]:
        weighting(_losses(*values))
    weighting.eval()
    weighting(_losses(100.0, 100.0))  # validation: ignored
    # entries: mean of steps 1-2 = (2, 1), mean of steps 3-4 = (1, 3); ratios (0.5, 3)
    e_ssi, e_grad = math.exp(0.5 / 2), math.exp(3.0 / 2)
    assert float(weighting.weights()["ssi"]) == pytest.approx(2 * e_ssi / (e_ssi + e_grad), rel=1e-6)
    assert int(weighting.num_entries) == 2


def test_dwa_manual_windows() -> None:
    weighting = DynamicWeightAverage(TASKS, window=None)
    for _ in range(5):
        weighting(_losses(2.0, 2.0))
    weighting.close_window()
    weighting(_losses(1.0, 2.0))
    weighting.close_window()
    weighting.close_window()  # empty window: no-op
    assert int(weighting.num_entries) == 2
    torch.testing.assert_close(weighting.history, torch.tensor([[1.0, 2.0], [2.0, 2.0]], dtype=torch.float64))


def test_dwa_epoch_windows_close_at_the_next_epoch_also_after_a_resume() -> None:
    """window=None: one entry per epoch, closed at the next epoch's first batch (``start_epoch``).

    Epoch 0 records (2, 2) three times, epoch 1 (1, 2) twice: after epoch 2 starts the history is [(1, 2), (2, 2)].
    A run resumed from a checkpoint written after epoch 0's last batch (Lightning runs no epoch-end hook for it
    again) gets the same history, because the open window and its epoch travel in the state dict.
    """

    def train_epoch(weighting: DynamicWeightAverage, epoch: int, values: tuple[float, float], batches: int) -> None:
        for _ in range(batches):
            weighting.start_epoch(epoch)
            weighting(_losses(*values))

    expected = torch.tensor([[1.0, 2.0], [2.0, 2.0]], dtype=torch.float64)
    full = DynamicWeightAverage(TASKS, window=None)
    train_epoch(full, 0, (2.0, 2.0), 3)
    assert int(full.num_entries) == 0  # epoch 0's window is still open at its end
    train_epoch(full, 1, (1.0, 2.0), 2)
    full.start_epoch(2)
    torch.testing.assert_close(full.history, expected)
    assert int(full.num_entries) == 2

    interrupted = DynamicWeightAverage(TASKS, window=None)
    train_epoch(interrupted, 0, (2.0, 2.0), 3)
    resumed = DynamicWeightAverage(TASKS, window=None)
    resumed.load_state_dict(interrupted.state_dict())
    train_epoch(resumed, 1, (1.0, 2.0), 2)
    resumed.start_epoch(2)
    torch.testing.assert_close(resumed.history, expected)
    assert int(resumed.num_entries) == 2
    # Fixed windows ignore epochs.
    fixed = DynamicWeightAverage(TASKS, window=2)
    fixed(_losses(1.0, 1.0))
    fixed.start_epoch(5)
    assert int(fixed.window_count) == 1 and int(fixed.num_entries) == 0


# ----------------------------------------------------------------------------------------------------- GradNorm


class _TwoHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(8, 16)
        self.head_a = nn.Linear(16, 1)
        self.head_b = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.tanh(self.shared(x))
        return self.head_a(z), self.head_b(z)


def test_gradnorm_balances_gradient_norms_on_two_head_model() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y_a = x @ torch.randn(8, 1)
    y_b = 10 * (x @ torch.randn(8, 1))  # 100x larger loss, ~10x larger gradients
    model = _TwoHead()
    weighting = GradNormWeighting(["a", "b"], alpha=1.5)
    shared = resolve_shared_parameters(model, "shared.weight")
    optimizer = torch.optim.Adam([{"params": model.parameters(), "lr": 1e-4}, *weighting.param_groups(lr=0.05)])

    def losses() -> dict[str, torch.Tensor]:
        out_a, out_b = model(x)
        return {"a": ((out_a - y_a) ** 2).mean(), "b": ((out_b - y_b) ** 2).mean()}

    def grad_norm_ratio() -> float:
        values, w = losses(), weighting.current_weights()
        g_a = torch.autograd.grad(values["a"], shared, retain_graph=True)[0].norm() * w[0]
        g_b = torch.autograd.grad(values["b"], shared)[0].norm() * w[1]
        return float(g_a / g_b)

    start = grad_norm_ratio()
    for _ in range(100):
        optimizer.zero_grad()
        weighting(losses(), shared_parameters=shared).backward()
        optimizer.step()
    end = grad_norm_ratio()
    assert abs(math.log(start)) > 2.0
    assert abs(math.log(end)) < 0.25 * abs(math.log(start))
    assert float(weighting.current_weights().sum()) == pytest.approx(2.0)
    assert weighting.aux_loss is not None and torch.isfinite(weighting.aux_loss)


def test_gradnorm_objective_and_gradients() -> None:
    weighting = GradNormWeighting(["a", "b"], alpha=1.5)
    shared = nn.Parameter(torch.tensor([1.0, 2.0]))
    values = {"a": (shared**2).sum(), "b": 3 * shared[0]}
    total = weighting(values, shared_parameters=[shared])
    # first call: L(0) = L, r = 1, targets = mean G; G = w * ||grad L_i|| = (||(2, 4)||, 3)
    g = torch.tensor([math.sqrt(20.0), 3.0])
    expected_aux = float((g - g.mean()).abs().sum())
    assert float(weighting.aux_loss) == pytest.approx(expected_aux, rel=1e-6)
    assert float(total.detach()) == pytest.approx(5.0 + 3.0 + expected_aux, rel=1e-6)
    total.backward()
    # the network sees sum_i w_i L_i with w constant: grad = 2 * shared + (3, 0)
    torch.testing.assert_close(shared.grad, torch.tensor([5.0, 4.0]))
    # w gets sign(G_i - target_i) * ||grad L_i||
    torch.testing.assert_close(weighting.task_weights.grad, torch.stack([g[0], -g[1]]))


def test_gradnorm_needs_shared_parameters_only_in_training() -> None:
    weighting = GradNormWeighting(TASKS)
    value = nn.Parameter(torch.tensor(2.0))
    with pytest.raises(ValueError, match="needs shared_parameters"):
        weighting({"ssi": value * 1.0, "grad": value * 2.0})
    weighting.eval()
    assert float(weighting({"ssi": value * 1.0, "grad": value * 2.0}).detach()) == pytest.approx(6.0)
    assert weighting.aux_loss is None


def test_gradnorm_renormalises_to_sum_k() -> None:
    weighting = GradNormWeighting(TASKS)
    with torch.no_grad():
        weighting.task_weights.copy_(torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(weighting.current_weights(), torch.tensor([1.5, 0.5]))
    weighting.eval()
    assert float(weighting(_losses(1.0, 1.0))) == pytest.approx(2.0)
    torch.testing.assert_close(weighting.task_weights.detach(), torch.tensor([1.5, 0.5]))


# -------------------------------------------------------------------------------------------- fixed, factory, state


def test_fixed_weighting() -> None:
    assert float(FixedWeighting(TASKS, weights=[1.0, 0.5])(_losses(2.0, 4.0))) == pytest.approx(4.0)
    assert float(FixedWeighting(TASKS, weights={"grad": 0.25})(_losses(2.0, 4.0))) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="need 2 weights"):
        FixedWeighting(TASKS, weights=[1.0])


def test_build_weighting_by_name() -> None:
    assert isinstance(build_weighting("uncertainty", TASKS), UncertaintyWeighting)
    assert build_weighting("dwa", TASKS, window=5).window == 5
    assert isinstance(build_weighting("gradnorm", TASKS, alpha=1.0), GradNormWeighting)
    assert isinstance(build_weighting("fixed", TASKS), FixedWeighting)
    with pytest.raises(ValueError, match="did you mean 'gradnorm'"):
        build_weighting("gradnrom", TASKS)
    with pytest.raises(ValueError, match="bad arguments"):
        build_weighting("dwa", TASKS, tempreature=2.0)
    with pytest.raises(ValueError, match="missing \\['grad'\\]"):
        build_weighting("fixed", TASKS)({"ssi": torch.tensor(1.0)})


def _trained(name: str) -> nn.Module:
    weighting = build_weighting(name, TASKS, **({"window": 1} if name == "dwa" else {}))
    shared = nn.Parameter(torch.tensor([1.0, -1.0]))
    optimizer = torch.optim.SGD([shared, *weighting.parameters()], lr=0.1)
    for step in range(3):
        optimizer.zero_grad()
        values = {"ssi": (shared**2).sum() * (step + 1), "grad": shared.abs().sum()}
        weighting(values, shared_parameters=[shared]).backward()
        optimizer.step()
    return weighting


@pytest.mark.parametrize("name", ["uncertainty", "dwa", "gradnorm", "fixed"])
def test_state_dict_round_trip(name: str) -> None:
    trained = _trained(name)
    fresh = build_weighting(name, TASKS, **({"window": 1} if name == "dwa" else {}))
    if name != "fixed":
        assert any(not torch.allclose(trained.weights()[k], fresh.weights()[k]) for k in TASKS)
    fresh.load_state_dict(trained.state_dict())
    for key in TASKS:
        torch.testing.assert_close(fresh.weights()[key], trained.weights()[key])
    for (key, a), b in zip(trained.state_dict().items(), fresh.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=key)


def test_resolve_shared_parameters() -> None:
    model = _TwoHead()
    assert resolve_shared_parameters(model, "shared") == [model.shared.weight, model.shared.bias]
    assert resolve_shared_parameters(model, "head_a.bias") == [model.head_a.bias]
    with pytest.raises(ValueError, match="closest"):
        resolve_shared_parameters(model, "sharde")


# ------------------------------------------------------------------------------------------------------ hybrid


def _depth_batch(seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    pred = torch.rand(2, 1, 16, 16, generator=generator)
    target = torch.rand(2, 1, 16, 16, generator=generator) * 2 - 1
    mask = torch.rand(2, 1, 16, 16, generator=generator) > 0.2
    image = torch.rand(2, 3, 16, 16, generator=generator) * 2 - 1
    return pred, target, mask, image


def test_hybrid_returns_named_parts_and_weights() -> None:
    pred, target, mask, image = _depth_batch()
    loss_fn = HybridDepthLoss(edge_source="both")
    pred.requires_grad_(True)
    total, parts = loss_fn(pred, target, mask, image)
    assert set(parts) == {"loss_ssi", "loss_grad", "weight_ssi", "weight_grad"}
    assert all(not value.requires_grad and value.ndim == 0 for value in parts.values())
    # the parts equal the standalone losses (the gradient term on the SSI-aligned prediction)
    torch.testing.assert_close(parts["loss_ssi"], ssi_loss(pred, target, mask).detach())
    expected_grad = gradient_huber_loss(pred, target, mask, image=image, edge_source="both").detach()
    torch.testing.assert_close(parts["loss_grad"], expected_grad)
    # uncertainty weighting at s = 0: total = 0.5 L_ssi + 0.5 L_grad, weights 0.5
    torch.testing.assert_close(total.detach(), 0.5 * parts["loss_ssi"] + 0.5 * parts["loss_grad"])
    assert float(parts["weight_ssi"]) == pytest.approx(0.5) and float(parts["weight_grad"]) == pytest.approx(0.5)
    total.backward()
    assert torch.isfinite(pred.grad).all() and loss_fn.weighting.log_vars.grad is not None


def test_hybrid_fixed_weights_and_gradnorm() -> None:
    pred, target, mask, image = _depth_batch(seed=1)
    fixed = HybridDepthLoss(weighting="fixed", weighting_kwargs={"weights": [1.0, 2.0]})
    total, parts = fixed(pred, target, mask, image)
    torch.testing.assert_close(total, parts["loss_ssi"] + 2.0 * parts["loss_grad"])
    assert float(parts["weight_grad"]) == 2.0

    head = nn.Conv2d(3, 1, 3, padding=1)
    gradnorm = HybridDepthLoss(weighting="gradnorm", edge_source="depth")
    total, parts = gradnorm(head(image), target, mask, shared_parameters=list(head.parameters()))
    assert "loss_gradnorm" in parts
    total.backward()
    assert gradnorm.weighting.task_weights.grad is not None


def test_hybrid_state_dict_round_trip() -> None:
    loss_fn = HybridDepthLoss(weighting="dwa", weighting_kwargs={"window": 1}, edge_source="none")
    pred, target, mask, _ = _depth_batch(seed=2)
    for seed in range(3):
        loss_fn(pred + 0.1 * seed * torch.rand_like(pred), target, mask)
    restored = HybridDepthLoss(weighting="dwa", weighting_kwargs={"window": 1}, edge_source="none")
    restored.load_state_dict(loss_fn.state_dict())
    torch.testing.assert_close(restored.weighting.history, loss_fn.weighting.history)
    torch.testing.assert_close(
        restored(pred, target, mask)[1]["weight_ssi"], loss_fn(pred, target, mask)[1]["weight_ssi"]
    )


def test_hybrid_bad_arguments() -> None:
    pred, target, mask, _ = _depth_batch()
    with pytest.raises(ValueError, match="needs 'image'"):
        HybridDepthLoss(edge_source="image")(pred, target, mask)
    with pytest.raises(ValueError, match="unknown weighting"):
        HybridDepthLoss(weighting="kendall")
    with pytest.raises(ValueError, match="data_term"):
        HybridDepthLoss(data_term="huber")


def test_hybrid_loss_rejects_bad_options_naming_them() -> None:
    with pytest.raises(ValueError, match=r"data_term must be 'l1' or 'l2', got 'l3'"):
        HybridDepthLoss(data_term="l3")
    with pytest.raises(ValueError, match=r"edge_source must be one of .*got 'rgb'"):
        HybridDepthLoss(edge_source="rgb")
    with pytest.raises(ValueError, match=r"delta must be > 0, got 0"):
        HybridDepthLoss(delta=0)
    with pytest.raises(ValueError, match=r"needs 'image'"):
        HybridDepthLoss(edge_source="image")(
            torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), torch.ones(1, 1, 8, 8, dtype=torch.bool)
        )
