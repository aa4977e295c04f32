"""Which timm CNNs `compress` can prune: keep=0.5 → ONNX → ONNX Runtime, beside Torch-Pruning run directly.

Each model is built at random weights (`timm:NAME`, 10 classes, small images), pruned to half its channels
in every group, exported to ONNX and run in ONNX Runtime; it counts when the runtime's output equals
PyTorch's. Torch-Pruning's own `MetaPruner` (L1, ratio 0.5, the classifier ignored, channels rounded to 8)
gets the same models and the same check, each within the same time limit. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from benchmarks.results import markdown_table, write_section  # noqa: E402
from evaluators.to_onnx import ExportError, export_onnx  # noqa: E402
from spaces.compress import CompressError, build_model, compress  # noqa: E402
from spaces.compress.depth import residual_blocks  # noqa: E402

# (family, model, image size): a small member of each timm family of CNNs, and attention models to refuse.
MODELS = [
    ("resnet", "resnet18", 64), ("resnet", "resnet26d", 64), ("resnet", "resnet10t", 64),
    ("resnetv2 (pre-activation)", "resnetv2_50", 64), ("resnext", "resnext26ts", 64),
    ("seresnet", "seresnet18", 64), ("ecaresnet", "ecaresnet26t", 64),
    ("nfnet (weight-standardized)", "nf_resnet26", 64),
    ("efficientnet", "efficientnet_b0", 64), ("efficientnet", "efficientnet_lite0", 64),
    ("mobilenetv2", "mobilenetv2_100", 64), ("mobilenetv3", "mobilenetv3_small_100", 64),
    ("mobilenetv3", "mobilenetv3_large_100", 64), ("mnasnet", "mnasnet_100", 64), ("mnasnet", "semnasnet_050", 64),
    ("ghostnet", "ghostnet_100", 64), ("ghostnet", "ghostnetv2_100", 64), ("regnet", "regnetx_002", 64),
    ("regnet", "regnety_002", 64), ("rexnet", "rexnet_100", 64), ("dla", "dla34", 64), ("dla", "dla46_c", 64),
    ("dpn", "dpn68", 64), ("densenet", "densenet121", 64), ("vgg", "vgg11_bn", 64),
    ("convnext", "convnext_atto", 64), ("convnext", "convnextv2_atto", 64), ("res2net", "res2net50_14w_8s", 64),
    ("res2net", "res2next50", 64), ("resnest", "resnest14d", 64), ("sknet", "skresnet18", 64),
    ("hrnet", "hrnet_w18_small", 64), ("mixnet", "mixnet_s", 64), ("cspnet", "cspresnet50", 64),
    ("cspnet", "cspdarknet53", 64), ("inception", "inception_v3", 96), ("inception", "inception_v4", 96),
    ("xception", "xception41", 64), ("xception", "legacy_xception", 64), ("tinynet", "tinynet_a", 64),
    ("lcnet", "lcnet_050", 64), ("fbnet", "fbnetc_100", 64), ("spnasnet", "spnasnet_100", 64),
    ("repvgg", "repvgg_a0", 64), ("selecsls", "selecsls42b", 64), ("hardcorenas", "hardcorenas_a", 64),
    ("vovnet", "ese_vovnet19b_dw", 64), ("darknet", "darknet53", 64),
    ("vit", "vit_tiny_patch16_224", 64), ("deit", "deit_tiny_patch16_224", 64),
    ("swin", "swin_tiny_patch4_window7_224", 64), ("mobilevit", "mobilevit_xxs", 64),
    ("efficientvit", "efficientvit_b0", 64), ("levit", "levit_128s", 64),
]


@dataclass
class Outcome:
    status: str  # "ok", "refused" (a message naming the layer), "mismatch", "error" (a traceback), "timeout"
    params: float = 0.0  # pruned / original parameters
    seconds: float = 0.0
    detail: str = ""


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Timeout


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check(small: nn.Module, x: torch.Tensor, path: Path) -> str:
    """'' when ONNX Runtime runs the exported `small` on `x` with PyTorch's output, else what went wrong."""
    with torch.no_grad():
        expected = small.eval()(x).numpy()
    export_onnx(small, tuple(x.shape[1:]), path, dynamic_batch=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    scale = max(1.0, float(np.abs(expected).max()))
    return "" if np.allclose(got, expected, rtol=1e-3, atol=1e-3 * scale) else "ONNX Runtime output differs"


def ours(model: nn.Module, x: torch.Tensor) -> nn.Module:
    return compress(model, x, keep=0.5)


def depth_and_width(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """keep=0.5 in every group and every second removable residual block dropped (replaced by the identity)."""
    blocks = residual_blocks(model, x[:1])
    if not blocks:
        raise CompressError("no removable residual block found (none adds its input to a branch of the same shape)")
    return compress(model, x[:1], keep=0.5, drop=[b.name for b in blocks[1::2]])


def torch_pruning(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Torch-Pruning's MetaPruner as its README shows it: L1 group importance, half of every group's channels."""
    import torch_pruning as tp

    classifier = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 10]
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  pruning_ratio=0.5, ignored_layers=classifier, round_to=8)
    pruner.step()
    return model


def attempt(prune: Callable[[nn.Module, torch.Tensor], nn.Module], name: str, size: int, limit: int,
            workdir: Path) -> Outcome:
    """Prune, export and run one model within `limit` seconds."""
    torch.manual_seed(0)
    model = build_model(f"timm:{name}", in_channels=3, num_classes=10, image_size=size).eval()
    x = torch.randn(2, 3, size, size)
    before = params(model)
    start = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit)
    try:
        small = prune(model, x)
        problem = check(small, x, workdir / f"{name}.onnx")
        outcome = Outcome("mismatch" if problem else "ok", params(small) / before, detail=problem)
    except _Timeout:
        outcome = Outcome("timeout", detail=f"no answer in {limit} s")
    except (CompressError, ExportError) as exc:
        outcome = Outcome("refused", detail=str(exc))
    except Exception as exc:  # a library's traceback: what this benchmark counts against a pruner
        outcome = Outcome("error", detail=f"{type(exc).__name__}: {exc}")
    finally:
        signal.alarm(0)
    outcome.seconds = time.perf_counter() - start
    return outcome


def cell(o: Outcome) -> str:
    if o.status == "ok":
        return f"prunes ({o.params:.2f} of the params, {o.seconds:.1f} s)"
    detail = o.detail.replace("|", "/").replace("\n", " ")
    return f"{o.status}: {detail[:140]}{'…' if len(detail) > 140 else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=120, help="seconds per model and pruner")
    parser.add_argument("--no-torch-pruning", action="store_true", help="skip running Torch-Pruning directly")
    parser.add_argument("--models", nargs="*", help="only these timm model names")
    parser.add_argument("--depth", action="store_true", help="compress with depth too: keep=0.5 and every second "
                                                             "removable block dropped (a section of its own)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    models = [m for m in MODELS if not args.models or m[1] in args.models]
    rows, ok, tp_ok = [], 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for family, name, size in models:
            mine = attempt(depth_and_width if args.depth else ours, name, size, args.limit, Path(tmp))
            row = {"family": family, "model": f"`{name}`", "input": f"{size}×{size}", "slimsearch compress": cell(mine)}
            ok += mine.status == "ok"
            if not args.no_torch_pruning:
                theirs = attempt(torch_pruning, name, size, args.limit, Path(tmp))
                row["Torch-Pruning MetaPruner"] = cell(theirs)
                tp_ok += theirs.status == "ok"
            print(row, flush=True)
            rows.append(row)
    how = "`compress(keep=0.5, drop=every second removable block)`" if args.depth else "`compress`"
    summary = f"**{ok} of {len(models)}** models compress, export and match in ONNX Runtime with {how}"
    if not args.no_torch_pruning:
        summary += f"; Torch-Pruning's MetaPruner run directly: **{tp_ok} of {len(models)}**"
    dropped = ", every second removable residual block dropped" if args.depth else ""
    body = (f"timm {__import__('timm').__version__}, random weights, 10 classes, keep=0.5 in every group{dropped}, "
            f"{args.limit} s per model and pruner. {summary}.\n\n{markdown_table(rows)}")
    print(summary)
    if not args.models:
        key, title = ("timm-coverage-depth", "timm models: depth + width → ONNX → ONNX Runtime") if args.depth else \
            ("timm-coverage", "timm models: compress → ONNX → ONNX Runtime")
        write_section(key, title, body)


if __name__ == "__main__":
    main()
