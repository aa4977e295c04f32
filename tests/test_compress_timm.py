"""`timm:NAME` base models: built offline, then `compress(keep=0.5)` → ONNX → ONNX Runtime equals PyTorch on a
sample of timm's CNN families; attention models are refused naming the layer. Heavy models are marked slow."""

from __future__ import annotations

import socket

import pytest
import torch

from spaces.compress import CompressError, build_model, compress, load_checkpoint
from tests.test_compress_coverage import assert_compresses_and_matches_onnx_runtime

# Fast: one model for each pattern the dependency graph must handle beyond torchvision's (ECA gates,
# partial residuals, dual paths, split attention, LayerNorm, a 7×7 pooled head); GhostNet's coupled concat
# halves and selective-kernel paths are checked channel by channel in test_compress.py.
FAST = [
    ("ecaresnet26t", 32), ("rexnet_100", 32), ("dpn68", 32), ("resnest14d", 32), ("convnext_atto", 32),
    ("vgg11_bn", 32),
]
SLOW = [
    ("mobilenetv3_small_100", 32), ("ghostnet_100", 32), ("skresnet18", 32), ("resnet10t", 32),
    ("resnext26ts", 32), ("seresnet18", 32), ("mnasnet_100", 32), ("regnety_002", 32), ("tinynet_e", 32), ("resnetv2_50", 64), ("efficientnet_b0", 64), ("mobilenetv2_100", 64),
    ("ghostnetv2_100", 64), ("dla34", 64), ("densenet121", 64), ("res2net50_14w_8s", 64), ("hrnet_w18_small", 64),
    ("mixnet_s", 64), ("cspresnet50", 64), ("inception_v3", 96), ("xception41", 64), ("regnetx_002", 64),
]
ATTENTION = ["vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224"]


@pytest.mark.parametrize("name, size", [*FAST, *(pytest.param(*m, marks=pytest.mark.slow) for m in SLOW)])
def test_keep_half_prunes_exports_and_matches_onnx_runtime(name, size, tmp_path):
    torch.manual_seed(0)
    model = build_model(f"timm:{name}", in_channels=3, num_classes=10, image_size=size).eval()
    assert_compresses_and_matches_onnx_runtime(model, torch.randn(2, 3, size, size), tmp_path / f"{name}.onnx")


@pytest.mark.parametrize("name", ATTENTION)
def test_attention_models_are_refused_naming_the_layer(name):
    model = build_model(f"timm:{name}", in_channels=3, num_classes=10, image_size=32).eval()
    with pytest.raises(CompressError, match=r"cannot prune layer '[\w.]+' \(\w*Attention\): attention layers"):
        compress(model, torch.randn(1, 3, 32, 32), keep=0.5)


def test_timm_models_build_offline_for_the_data_and_load_a_checkpoint(monkeypatch, tmp_path):
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was touched")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = build_model("timm:resnet18", in_channels=1, num_classes=7, image_size=32)
    assert model.conv1.in_channels == 1 and model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    path = tmp_path / "base.pt"
    torch.save(model.state_dict(), path)
    again = load_checkpoint(build_model("timm:resnet18", in_channels=1, num_classes=7, image_size=32), path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(CompressError, match=r"unknown timm model 'resnet_18'; did you mean resnet18"):
        build_model("timm:resnet_18", in_channels=3, num_classes=10, image_size=32)
