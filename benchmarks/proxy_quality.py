"""How well does a cheap accuracy estimate rank candidates like a long fine-tune does?

Samples candidates, scores each at several fidelities (no fine-tune after adaptive BN where the
space is a compression space; short, default and long fine-tunes) and reports the Spearman rank
correlation of each fidelity with the longest one, so the study's default fidelity is chosen on
evidence.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import markdown_table, shown, variant_name, write_section  # noqa: E402
from evaluators.train import evaluate  # noqa: E402
from search.config import load_config  # noqa: E402
from search.context import build_context  # noqa: E402
from search.scoring import scoring_for  # noqa: E402
from spaces import RandomSuggest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def score(ctx, scoring, candidate, epochs: float, seed: int) -> float:
    """Validation accuracy (fp32) of a candidate after `epochs` of fine-tuning (0: none), scored by the study's
    own scoring: a compressed candidate gets adaptive BN first and is distilled from the base."""
    torch.manual_seed(seed)
    model = ctx.space.build(copy.deepcopy(candidate))
    scoring.prepare(model, seed)
    if epochs == 0:
        return evaluate(model, scoring.validation(seed))
    tune = scoring.fine_tune(model, seed, epochs, candidate)
    tune.run_to(epochs)
    return tune.accuracy()


def how(config) -> str:
    """How a compressed candidate is scored, for the table's caption (empty for other spaces)."""
    if config.space.type != "compress":
        return ""
    return (f" (pruned from the trained base, BatchNorm statistics re-estimated on {config.train.bn_batches} "
            "training batches — fidelity 0 is that alone, the adaptive-BN proxy — then distilled from the base; "
            "fp32 accuracy)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", type=Path, default=ROOT / "studies/digits_blocks.yaml")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--fidelities", type=float, nargs="+", default=[0.5, 1, 4, 12],
                        help="fine-tune epochs per level; the last is the reference")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quick", action="store_true", help="8 candidates, fidelities 0.5 1 4")
    args = parser.parse_args()
    if args.quick:
        args.candidates, args.fidelities = 8, [0.5, 1, 4]
    with tempfile.TemporaryDirectory() as tmp:  # a compression study trains its base here
        config = load_config(args.recipe, [*args.overrides, f"output_dir={tmp}"])
        ctx = build_context(config)
    scoring = scoring_for(ctx)
    candidates = [ctx.space.sample(RandomSuggest(1000 + i)) for i in range(args.candidates)]
    scores: dict[float, list[float]] = {f: [] for f in args.fidelities}
    cost: dict[float, float] = {f: 0.0 for f in args.fidelities}
    for i, cand in enumerate(candidates):
        for f in args.fidelities:
            t = time.perf_counter()
            scores[f].append(score(ctx, scoring, cand, f, seed=i))
            cost[f] += time.perf_counter() - t
        print(f"candidate {i}: " + " ".join(f"{f}ep={scores[f][-1]:.4f}" for f in args.fidelities), flush=True)
    ref = args.fidelities[-1]
    rows = []
    for f in args.fidelities:
        rho = spearmanr(scores[f], scores[ref]).statistic if f != ref else 1.0
        rows.append({"fidelity (epochs)": f, "Spearman vs longest": f"{rho:.3f}",
                     "mean accuracy": f"{sum(scores[f]) / len(scores[f]):.4f}",
                     "s per candidate": f"{cost[f] / len(candidates):.2f}"})
    table = markdown_table(rows)
    print(table)
    variant = "".join(f" {o}" for o in args.overrides)
    write_section(f"proxy-{variant_name(args.recipe, args.overrides)}", f"Proxy quality: {args.recipe.stem}{variant}",
                  f"{len(candidates)} random candidates of `{shown(args.recipe)}`{variant and ' with' + variant}, "
                  "each fine-tuned from "
                  f"the same start at every fidelity{how(config)}; rank correlation with the {ref}-epoch accuracy."
                  "\n\n" + table)


if __name__ == "__main__":
    main()
