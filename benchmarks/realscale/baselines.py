"""Baselines of the real-scale benchmark: uniform L1 pruning (slimsearch's `compress`) and Torch-Pruning's own
global L1 pruning, each matched to a FLOPs target, and the short fine-tune every study trial gets.

The short fine-tune repeats what a compression trial does — BatchNorm recalibrated on `train.bn_batches`
batches, then `train.epochs` of the recipe's fine-tune distilled from the base, scored on the validation
split — with evaluators' public functions, so a baseline and a searched policy are compared at the same
fine-tune budget. FLOPs and parameters are counted with fvcore as in the study; the Torch-Pruning ratio is
found with Torch-Pruning's own counter, as its documentation does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn as nn
import torch_pruning as tp

from evaluators.cost import measure_cost
from evaluators.latency import LatencyBackend
from evaluators.splits import DataBundle
from evaluators.train import TrainSettings, evaluate, placed, recalibrate_bn, train_model
from search.recipe.config import StudyConfig
from spaces.compress import compress

BISECTIONS = 12


def example_input(data: DataBundle) -> torch.Tensor:
    return torch.zeros(1, *data.input_shape)


def bisect(build: Callable[[float], tuple[nn.Module, float]], target: float, low: float, high: float,
           rising: bool) -> tuple[float, nn.Module, float]:
    """The argument in [low, high] whose model's cost comes closest to `target` (cost rising or falling with the
    argument, in steps where channels are rounded): (argument, model, cost)."""
    best: tuple[float, nn.Module, float] | None = None
    for _ in range(BISECTIONS):
        mid = round((low + high) / 2, 4)
        model, cost = build(mid)
        if best is None or abs(cost - target) < abs(best[2] - target):
            best = (mid, model, cost)
        if (cost < target) == rising:
            low = mid
        else:
            high = mid
    assert best is not None
    return best


def uniform_l1(base: nn.Module, data: DataBundle, keep: float, round_to: int) -> nn.Module:
    """Every prunable group keeps `keep` of its channels, lowest group L1 norm removed (slimsearch's `compress`)."""
    return compress(base, example_input(data), keep=keep, round_to=round_to, importance="l1")


def match_uniform(base: nn.Module, data: DataBundle, target_macs: int, round_to: int,
                  keep_range: tuple[float, float]) -> tuple[float, nn.Module]:
    """The uniform keep ratio (to 4 decimals) whose network's MACs come closest to `target_macs`."""
    def build(keep: float) -> tuple[nn.Module, float]:
        model = uniform_l1(base, data, keep, round_to)
        return model, measure_cost(model, data.input_shape).macs

    keep, model, _ = bisect(build, target_macs, keep_range[0], keep_range[1], rising=True)
    return keep, model


def classifier_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """The final classifier(s), which Torch-Pruning must leave whole."""
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]


def tp_global_l1(base: nn.Module, data: DataBundle, ratio: float, round_to: int) -> nn.Module:
    """Torch-Pruning's global pruning as its documentation shows it: `MetaPruner` with group L1 magnitude
    (`MagnitudeImportance(p=1)`), `global_pruning=True`, `pruning_ratio`, the classifier ignored, one step."""
    model = copy.deepcopy(base).eval()
    pruner = tp.pruner.MetaPruner(
        model, example_input(data), importance=tp.importance.MagnitudeImportance(p=1), global_pruning=True,
        pruning_ratio=ratio, ignored_layers=classifier_layers(model, data.num_classes), round_to=round_to,
    )
    pruner.step()
    return model.eval()


def match_tp_global(base: nn.Module, data: DataBundle, target_share: float, round_to: int) -> tuple[float, nn.Module]:
    """The `pruning_ratio` (to 4 decimals) whose globally pruned network keeps the share `target_share` of the
    base's MACs, counted with `tp.utils.count_ops_and_params`."""
    x = example_input(data)
    base_macs, _ = tp.utils.count_ops_and_params(base, x)

    def build(ratio: float) -> tuple[nn.Module, float]:
        model = tp_global_l1(base, data, ratio, round_to)
        return model, tp.utils.count_ops_and_params(model, x)[0] / base_macs

    ratio, model, _ = bisect(build, target_share, 0.0, 0.95, rising=False)
    return ratio, model


def train_settings(config: StudyConfig) -> TrainSettings:
    """The recipe's candidate fine-tune, its device resolved (as every study trial is fine-tuned)."""
    fields = config.train.model_dump(exclude={"threads", "bn_batches"})
    return TrainSettings(**{**fields, "device": config.train.resolved_device()})


def short_finetune(model: nn.Module, base: nn.Module, data: DataBundle, config: StudyConfig,
                   seed: int) -> dict[str, float]:
    """A study trial's fine-tune of `model` (in place): adaptive BN, then the recipe's distilled fine-tune;
    validation accuracy after each."""
    settings = train_settings(config)
    val = data.val.subset(settings.max_eval_samples, seed)
    torch.manual_seed(seed)
    with placed(settings.device, model):
        recalibrate_bn(model, data.train, config.train.bn_batches, settings.batch_size, seed)
        adaptive = evaluate(model, val)
    result = train_model(model, data, settings, seed=seed, teacher=base)
    return {"val_acc_adaptive_bn": adaptive, "val_acc": result.accuracy, "seconds": round(result.seconds, 2)}


def describe_cost(model: nn.Module, data: DataBundle, base_cost: dict[str, int]) -> dict[str, float]:
    """MACs, FLOPs and parameters (fvcore) and their reductions against the base."""
    cost = measure_cost(model, data.input_shape)
    return {
        "macs": cost.macs, "flops": cost.flops, "params": cost.params,
        "flops_reduction": 1 - cost.macs / base_cost["macs"], "params_reduction": 1 - cost.params / base_cost["params"],
    }


def latency_ms(backend: LatencyBackend, model: nn.Module, data: DataBundle, batch_size: int) -> float:
    """Median fp32 latency of one batch on the backend."""
    return backend.measure(model, data.input_shape, "fp32", batch_size).median_ms
