"""Tucker-2 vs spatial SVD (k×1 + 1×k) vs channel SVD (k×k to rank R + 1×1) at equal parameter count.

One base network is trained once (as the recipe's compression study would, cached in --runs). Then every k×k conv
of it is factorized in each form, with ranks chosen so each layer keeps the same share of its parameters in every
form (--shares; ranks are whole numbers, so the counts differ by at most a rank's worth). Each factorized network
gets the same fine-tune — the recipe's `train:` section, distilled from the base — and is scored on the validation
split and timed in ONNX Runtime as the recipe's latency section says. Channel SVD is the plain truncated SVD of
the unfolded kernel (Cout × Cin·k·k), a baseline outside the compress space; the other two are its `rank_forms`.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402

from benchmarks.results import RESULTS, markdown_table, run_name, variant_name, write_section  # noqa: E402
from evaluators.cost import measure_cost  # noqa: E402
from evaluators.train import evaluate, recalibrate_bn, train_model  # noqa: E402
from search.recipe.config import load_config  # noqa: E402
from search.trial.context import make_backend, recipe_data  # noqa: E402
from search.trial.scoring.base_network import prepare_base  # noqa: E402
from search.trial.scoring.scoring import train_settings  # noqa: E402
from spaces.compress.lowrank import factorize_conv, factorize_tucker2, kxk_conv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FORMS = ("tucker2", "spatial", "channel")
SMOKE = ["space.base.kwargs={widths: [16, 16, 32]}", "space.base.epochs=1", "data.image_size=8", "train.epochs=0.2",
         "train.bn_batches=2", "latency.max_seconds=0.1", "latency.batch_size=1"]


@torch.no_grad()
def channel_svd(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """A k×k conv as a k×k conv Cin → `rank` then a 1×1 conv `rank` → Cout: the truncated SVD of its kernel
    unfolded as Cout × (Cin·k·k), √Σ on each side."""
    out_ch, in_ch, kh, kw = conv.weight.shape
    u, s, vh = torch.linalg.svd(conv.weight.double().reshape(out_ch, -1), full_matrices=False)
    root = s[:rank].sqrt()
    first = nn.Conv2d(in_ch, rank, (kh, kw), conv.stride, conv.padding, conv.dilation, bias=False)
    second = nn.Conv2d(rank, out_ch, 1, bias=conv.bias is not None)
    first.weight.copy_((root[:, None] * vh[:rank]).reshape(rank, in_ch, kh, kw).float())
    second.weight.copy_((u[:, :rank] * root).reshape(out_ch, rank, 1, 1).float())
    if conv.bias is not None:
        second.bias.copy_(conv.bias)
    return nn.Sequential(first, second)


def factorized(conv: nn.Conv2d, form: str, share: float) -> nn.Sequential:
    """`conv` in `form` with about `share` of its weights (ranks at least 1, whole numbers)."""
    out_ch, in_ch, kh, kw = conv.weight.shape
    target = share * out_ch * in_ch * kh * kw
    if form == "spatial":
        return factorize_conv(conv, max(1, round(target / (in_ch * kh + out_ch * kw))))
    if form == "channel":
        return channel_svd(conv, max(1, round(target / (in_ch * kh * kw + out_ch))))
    # Tucker-2 with R_in = a·Cin, R_out = a·Cout: Cin·R_in + k²·R_in·R_out + R_out·Cout = target, solved for a
    quad, lin = kh * kw * in_ch * out_ch, in_ch * in_ch + out_ch * out_ch
    a = (-lin + math.sqrt(lin * lin + 4 * quad * target)) / (2 * quad)
    return factorize_tucker2(conv, max(1, min(in_ch, round(a * in_ch))), max(1, min(out_ch, round(a * out_ch))))


def convs(model: nn.Module) -> list[str]:
    """The k×k convs every form factorizes: the same layers in each network."""
    return [name for name, m in model.named_modules() if kxk_conv(m)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", action="store_true", help="studies/cifar10_resnet_prune.yaml instead of digits")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.5, 0.25, 0.125],
                        help="share of each factorized layer's weights kept, the same in every form")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--runs", type=Path, help="keep the trained base here (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and one share: checks the script")
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file to write the section into")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args()
    recipe = ROOT / ("studies/cifar10_resnet_prune.yaml" if args.cifar else "studies/digits_prune.yaml")
    label = [recipe.stem, *args.overrides]
    if args.smoke:
        args.shares, args.overrides = [0.25], [*SMOKE, *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or Path(tmp)
        config = load_config(recipe, [*args.overrides, f"name={run_name(recipe, ['tucker2', *args.overrides])}",
                                      f"output_dir={runs}"])
        config.run_dir.mkdir(parents=True, exist_ok=True)
        data = recipe_data(config)
        base = prepare_base(config, data).model
        backend, settings = make_backend(config.latency), train_settings(config)
        val, batch = data.val.subset(settings.max_eval_samples, config.seed), config.latency.batch_size
        layers = convs(base)
        base_params = measure_cost(base, data.input_shape).params
        base_ms = backend.measure(base, data.input_shape, "fp32", batch).median_ms
        rows = []
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      disable=args.no_progress) as bar:
            task = bar.add_task("factorize, fine-tune, time", total=len(args.shares) * len(FORMS))
            for share in args.shares:
                point = []
                for form in FORMS:
                    bar.update(task, description=f"share {share:g}, {form}")
                    model = copy.deepcopy(base)
                    for name in layers:
                        model.set_submodule(name, factorized(base.get_submodule(name), form, share))
                    recalibrate_bn(model, data.train, config.train.bn_batches, settings.batch_size, config.seed)
                    before = evaluate(model, val)
                    torch.manual_seed(config.seed)
                    after = train_model(model, data, settings, seed=config.seed, teacher=base).accuracy
                    ms = backend.measure(model, data.input_shape, "fp32", batch).median_ms
                    point.append({"share": f"{share:g}", "form": form,
                                  "params": measure_cost(model, data.input_shape).params,
                                  "acc (factorized)": before, "acc (fine-tuned)": after, "ms": ms})
                    bar.advance(task)
                ref = dict(point[0])
                for p in point:
                    p["Δacc vs tucker2"] = f"{p['acc (fine-tuned)'] - ref['acc (fine-tuned)']:+.4f}"
                    p["Δms vs tucker2"] = f"{p['ms'] - ref['ms']:+.4f}"
                    p["params ÷ base"] = f"{p['params'] / base_params:.3f}"
                    p.update({k: f"{p[k]:.4f}" for k in ("acc (factorized)", "acc (fine-tuned)", "ms")})
                    print(p, flush=True)
                rows += point
    tables = "\n\n".join(f"Each factorized layer keeps {share:g} of its weights:\n\n"
                         + markdown_table([r for r in rows if r["share"] == f"{share:g}"]) for share in args.shares)
    print(tables)
    write_section(
        f"tucker2-{variant_name(recipe, label[1:])}{'-smoke' if args.smoke else ''}",
        f"Tucker-2 vs spatial SVD vs channel SVD at equal parameter count ({' '.join(label)}"
        + (", smoke)" if args.smoke else ")"),
        f"Base `{config.space.base.model}` {config.space.base.kwargs or ''}: {base_params / 1e3:.1f}K params, "
        f"{base_ms:.4f} ms. The same {len(layers)} k×k convs factorized in every form; then adaptive BN on "
        f"{config.train.bn_batches} batches, {config.train.epochs:g} epoch(s) of fine-tune distilled from the base "
        f"(α {config.train.kd_alpha:g}), accuracy on the {config.data.dataset} validation split, fp32 latency in "
        f"{backend.name} with {config.latency.threads} thread at batch {batch}. Forms: tucker2 = 1×1, k×k core, 1×1 "
        "(HOSVD); spatial = k×1 then 1×k; channel = k×k to rank R then 1×1 (SVD of the unfolded kernel).\n\n"
        f"{tables}\n\nLoad average (1, 5, 15 min) at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} "
        f"on {os.cpu_count()} cores.",
        path=args.results,
    )


if __name__ == "__main__":
    main()
