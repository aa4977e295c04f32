"""The one trainer (evaluators.train with evaluators.device_data) on the digits set: a fine-tune cut anywhere and
continued is bit-identical to a straight one on the CPU, its flips and crops are drawn per image and fixed by a
seed, a replanned schedule still anneals, evaluation on the held data matches the plain batches, and on a CUDA GPU
the steps run in bf16 and channels_last on data held there."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch

from evaluators.device_data import flip_and_crop, on_device
from evaluators.splits import DataBundle, bundle_from_arrays, load_data
from evaluators.train import SCHEDULES, FineTune, TrainingDiverged, TrainSettings, evaluate, train_model
from spaces.compress.nets import tiny_resnet


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    """The digits set with augmentation on, as CIFAR-10 trains (too strong for 8×8 digits to learn, but every
    step draws flips and crops)."""
    return dataclasses.replace(load_data("digits"), augment=True)


@pytest.fixture(scope="module")
def digits_uint8() -> DataBundle:
    """The digits set stored as uint8 images, as the decoded data sets are."""
    data = load_data("digits")
    x = torch.cat([data.train.x, data.val.x])
    y = torch.cat([data.train.y, data.val.y])
    as_bytes = (x * 255).round().to(torch.uint8)
    test = (data.test.x * 255).round().to(torch.uint8)
    return bundle_from_arrays("digits8", as_bytes, y, test, data.test.y, 0.2, 0)


def network(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return tiny_resnet(10, 1, widths=(8, 16, 16))


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


def reloaded(state: dict) -> dict:
    """`state` written and read back, as a checkpoint between processes is."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_a_fine_tune_cut_anywhere_and_continued_is_bit_identical_to_a_straight_one(digits, schedule):
    settings = TrainSettings(epochs=2.5, batch_size=32, max_train_samples=300, kd_alpha=0.5, bn_l1=1e-4,
                             schedule=schedule)
    teacher = network(7).eval()
    straight = FineTune(network(), digits, settings, seed=3, teacher=teacher)
    straight.run_to(settings.epochs)

    cut = FineTune(network(), digits, settings, seed=3, teacher=teacher)
    cut.run_to(0.35)  # mid-epoch
    state = reloaded(cut.state_dict())
    for stop in (1.0, settings.epochs):  # an epoch's end, then the rest
        resumed = FineTune(network(99), digits, settings, seed=3, teacher=teacher)
        resumed.load_state_dict(state)
        resumed.run_to(stop)
        state = reloaded(resumed.state_dict())
    assert resumed.step == straight.step == straight.total_steps == 25
    assert all(torch.equal(a, b) for a, b in zip(weights(straight.model), weights(resumed.model)))
    assert resumed.loss == straight.loss and resumed.accuracy() == straight.accuracy()


def test_flips_and_crops_are_drawn_per_image_and_fixed_by_the_seed(digits_uint8):
    images = digits_uint8.train.x[:64]
    rows = torch.arange(64)

    def drawn(seed: int) -> torch.Tensor:
        return flip_and_crop(images, rows, torch.Generator().manual_seed(seed))

    out = drawn(0)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out, drawn(0)) and not torch.equal(out, drawn(1))
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    firsts, moved, flipped_only = set(), 0, 0
    for i in range(64):
        found = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                 if torch.equal(out[i], (lambda c: c.flip(2) if f else c)(padded[i, :, dy:dy + 8, dx:dx + 8]))]
        assert found, f"image {i} is not a flip-and-crop of its padded original"
        firsts.add(found[0])
        moved += (4, 4, False) not in found
        flipped_only += (4, 4, True) in found and (4, 4, False) not in found
    assert len(firsts) > 16 and moved > 48 and flipped_only > 0  # drawn per image: offsets and flips vary


def test_batches_on_the_device_normalize_as_the_split_does(digits_uint8):
    split = digits_uint8.train
    rows = torch.arange(0, 50, 3)
    x, y = on_device(split, "cpu").batch(rows)
    assert x.dtype == torch.float32 and torch.equal(y, split.y[rows])
    assert torch.allclose(x, split.normalize(split.x[rows]), atol=1e-5)
    model = network().eval()
    with torch.no_grad():
        expected = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in digits_uint8.val.batches(64))
    assert evaluate(model, digits_uint8.val, batch_size=100) == expected / len(digits_uint8.val)


def test_a_replanned_schedule_anneals_over_the_new_plan_and_continues_with_it(digits):
    settings = TrainSettings(epochs=4, batch_size=64, max_train_samples=256)
    tune = FineTune(network(), digits, settings)
    tune.run_to(1)
    tune.replan(2)
    planned_so = FineTune(network(), digits, dataclasses.replace(settings, epochs=2))
    planned_so.run_to(1)
    assert tune.total_steps == 8 and tune.optimizer.param_groups[0]["lr"] == planned_so.optimizer.param_groups[0]["lr"]
    state = reloaded(tune.state_dict())
    tune.run_to(4)
    planned_so.run_to(2)
    assert tune.step == 8 and tune.optimizer.param_groups[0]["lr"] == planned_so.optimizer.param_groups[0]["lr"]
    resumed = FineTune(network(), digits, settings)
    resumed.load_state_dict(state)
    resumed.run_to(4)
    assert resumed.total_steps == 8 and resumed.step == 8
    assert all(torch.equal(a, b) for a, b in zip(weights(tune.model), weights(resumed.model)))


def test_the_cosine_schedule_warms_up_then_anneals_to_zero_with_momentum_fixed(digits):
    settings = TrainSettings(epochs=5, batch_size=64, max_train_samples=256, lr=0.1, warmup=0.2, schedule="cosine")
    tune = FineTune(network(), digits, settings)
    lrs, momenta = [], []
    for step in range(1, tune.total_steps + 1):
        tune.run_to(step / tune.steps_per_epoch)
        lrs.append(tune.optimizer.param_groups[0]["lr"])
        momenta.append(tune.optimizer.param_groups[0]["momentum"])
    assert tune.total_steps == 20 and lrs[3] == pytest.approx(0.1)  # 4 warm-up steps, then the peak
    assert lrs[:4] == sorted(lrs[:4]) and lrs[3:] == sorted(lrs[3:], reverse=True)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and lrs[11] == pytest.approx(0.05)  # half-way down: half the lr
    assert set(momenta) == {0.9}
    with pytest.raises(ValueError, match="schedule must be one of one-cycle, cosine"):
        FineTune(network(), digits, dataclasses.replace(settings, schedule="step"))


def test_a_diverging_fine_tune_raises_and_sample_caps_hold(digits):
    with pytest.raises(TrainingDiverged, match="loss became"):
        train_model(network(), digits, TrainSettings(epochs=3, batch_size=32, lr=1e8, max_train_samples=128))
    tune = FineTune(network(), digits, TrainSettings(max_train_samples=100, batch_size=32, max_eval_samples=50))
    assert tune.images == 100 and tune.steps_per_epoch == 4 and 0 <= tune.accuracy() <= 1


@pytest.mark.parametrize("settings", [
    pytest.param(TrainSettings(epochs=3, batch_size=64, device="cuda"), id="cuda-by-default",
                 marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU to train on")),
    pytest.param(TrainSettings(epochs=3, batch_size=64, bf16=True, channels_last=True), id="cpu-when-asked"),
])
def test_steps_run_in_bf16_and_channels_last_on_data_held_on_the_device(settings, digits_uint8):
    seen: list[tuple[torch.dtype, torch.device, bool, bool]] = []
    model = network()
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        if module.training:
            x = inputs[0]
            seen.append((output.dtype, x.device, x.is_contiguous(memory_format=torch.channels_last),
                         module.weight.is_contiguous(memory_format=torch.channels_last)))

    conv.register_forward_hook(record)
    device = torch.device(settings.device)
    result = train_model(model, digits_uint8, settings)
    assert seen and all(s[0] == torch.bfloat16 and s[1].type == device.type and s[2] and s[3] for s in seen)
    held = on_device(digits_uint8.train, device)
    assert held.x.dtype == torch.uint8 and held.x.device.type == device.type
    assert held.x.data_ptr() == on_device(digits_uint8.train, device).x.data_ptr(), "one copy per process"
    assert all(p.device.type == "cpu" and p.is_contiguous() for p in model.parameters())
    assert result.accuracy > 0.5
