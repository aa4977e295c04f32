"""How well does a cheap accuracy estimate rank candidates like a long fine-tune does?

Samples candidates, scores each at several fidelities (no fine-tune after adaptive BN where the space is a
compression space; short, default and long fine-tunes) and reports the Spearman rank correlation of each
fidelity with the longest one, and how many of the reference's best third each fidelity also puts in its best
third (what a successive-halving rung with η = 3 promotes), so the study's default fidelity is chosen on evidence.

`--speedup LOW HIGH` (a compression recipe with a latency table) picks the candidates to span that range of
predicted speed-up over the base, log-evenly. `--cut` scores every fidelity on one fine-tune planned for the
longest, cut at each (as a multi-fidelity study's rungs are); without it each fidelity is a fresh fine-tune.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import markdown_table, shown, variant_name, write_section  # noqa: E402
from evaluators.train import evaluate  # noqa: E402
from search.recipe.config import load_config  # noqa: E402
from search.trial.build import build_context  # noqa: E402
from search.trial.context import StudyContext  # noqa: E402
from search.trial.scoring import Scoring, scoring_for  # noqa: E402
from spaces import Candidate, RandomSuggest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def score(ctx: StudyContext, scoring: Scoring, candidate: Candidate, fidelities: list[float], seed: int,
          cut: bool) -> list[float]:
    """Validation accuracy (fp32) of a candidate at each fidelity in fine-tune epochs (0: none), scored by the
    study's own scoring: a compressed candidate gets adaptive BN first and is distilled from the base. `cut`: one
    fine-tune planned for the last fidelity, scored as it passes each; else a fresh fine-tune per fidelity."""
    scores: list[float] = []
    tune = None
    for f in fidelities:
        if tune is None or not cut:
            torch.manual_seed(seed)
            model = ctx.space.build(copy.deepcopy(candidate))
            prepared = scoring.prepare(model, seed)
            tune = scoring.fine_tune(model, seed, fidelities[-1] if cut else f, candidate) if cut or f > 0 else None
        if f == 0:  # a compressed candidate was scored by its adaptive BN already
            after_bn = prepared.get("accuracy_adaptive_bn")
            scores.append(evaluate(model, scoring.validation()) if after_bn is None else after_bn)
            continue
        tune.run_to(f)
        scores.append(tune.accuracy())
    return scores


def speedups(ctx: StudyContext, candidates: list[Candidate]) -> list[float]:
    """Each candidate's speed-up over the base predicted by the study's latency table."""
    return [ctx.predictor.predict(c).speedup for c in candidates]


def spanning(ctx: StudyContext, n: int, low: float, high: float, pool: int = 600) -> list[Candidate]:
    """`n` candidates whose predicted speed-ups lie closest to `n` targets log-evenly spaced over [low, high]."""
    if ctx.predictor is None:
        raise SystemExit("--speedup needs a recipe with a latency table (latency.table)")
    drawn = [ctx.space.sample(RandomSuggest(1000 + i)) for i in range(pool)]
    speed = speedups(ctx, drawn)
    chosen: list[int] = []
    for k in range(n):
        target = low * (high / low) ** (k / max(n - 1, 1))
        free = [i for i in range(pool) if i not in chosen]
        chosen.append(min(free, key=lambda i: abs(math.log(speed[i] / target))))
    return [drawn[i] for i in chosen]


def top_share(scores: list[float], reference: list[float], share: float = 1 / 3) -> float:
    """Of the reference's best `share` of candidates, the fraction that `scores` also ranks in its best `share`."""
    k = max(1, int(len(scores) * share))
    best = set(sorted(range(len(reference)), key=lambda i: -reference[i])[:k])
    picked = set(sorted(range(len(scores)), key=lambda i: -scores[i])[:k])
    return len(best & picked) / k


def how(config, cut: bool, fidelities: list[float]) -> str:
    """How a candidate is scored, for the table's caption."""
    fine_tune = (f"one fine-tune planned for {fidelities[-1]:g} epochs, scored as it passes each fidelity"
                 if cut else "a fresh fine-tune per fidelity")
    if config.space.type != "compress":
        return f" ({fine_tune})"
    return (f" (pruned from the trained base, BatchNorm statistics re-estimated on {config.train.bn_batches} "
            f"training batches of {config.train.batch_size} — fidelity 0 is that alone, the adaptive-BN proxy — then "
            f"{fine_tune}, distilled from the base; fp32 accuracy on the same "
            f"{config.train.max_eval_samples or 'all'} validation images for every candidate)")


def bands(predicted: list[float], parts: int = 3) -> list[list[int]]:
    """Candidate indices split into `parts` bands of predicted speed-up, slowest band first."""
    order = sorted(range(len(predicted)), key=lambda i: predicted[i])
    size = math.ceil(len(order) / parts)
    return [order[k:k + size] for k in range(0, len(order), size)]


def report(args: argparse.Namespace, config, run: dict) -> None:
    """The table (Spearman with the longest fidelity overall and, where speed-ups are known, within each third
    of the speed-up range, where candidates compete at similar latency) and its RESULTS.md section."""
    fidelities, predicted = run["fidelities"], run["predicted_speedup"]
    scores = {f: run["scores"][str(f)] for f in fidelities}
    ref = fidelities[-1]
    groups = bands(predicted) if None not in predicted else []
    rows = []
    for f in fidelities:
        row = {"fidelity (epochs)": f"{f:g}" + (" (adaptive BN)" if f == 0 else ""),
               "Spearman vs longest": f"{spearmanr(scores[f], scores[ref]).statistic:.3f}" if f != ref else "1",
               "best third kept": f"{top_share(scores[f], scores[ref]):.2f}"}
        if groups:
            row["Spearman within speed-up thirds"] = " / ".join(
                "1" if f == ref else f"{spearmanr([scores[f][i] for i in g], [scores[ref][i] for i in g]).statistic:.2f}"
                for g in groups)
        row["mean accuracy"] = f"{sum(scores[f]) / len(scores[f]):.4f}"
        rows.append(row)
    table = markdown_table(rows)
    print(table)
    n = len(scores[ref])
    span = "" if not groups else (f" whose predicted speed-ups over the base span {min(predicted):.2f}×–"
                                  f"{max(predicted):.2f}× (thirds: " + ", ".join(
                                      f"{min(predicted[i] for i in g):.2f}–{max(predicted[i] for i in g):.2f}×"
                                      for g in groups) + ")")
    variant = "".join(f" {o}" for o in args.overrides) + (" cut" if args.cut else "")
    write_section(f"proxy-{variant_name(args.recipe, args.overrides)}{'-cut' if args.cut else ''}",
                  f"Proxy quality: {args.recipe.stem}{variant}",
                  f"{n} candidates of `{shown(args.recipe)}`{span}{how(config, args.cut, fidelities)}; rank "
                  f"correlation with the {ref:g}-epoch accuracy; {run['seconds'] / 60:.0f} min in all on "
                  f"{config.train.resolved_device()}.\n\n" + table)


def measure(args: argparse.Namespace, config, fidelities: list[float]) -> dict:
    """Score the candidates at every fidelity; the run as written to `--json` (after each candidate)."""
    ctx = build_context(config)
    scoring = scoring_for(ctx)
    if args.speedup:
        candidates = spanning(ctx, args.candidates, *args.speedup)
    else:
        candidates = [ctx.space.sample(RandomSuggest(1000 + i)) for i in range(args.candidates)]
    predicted = speedups(ctx, candidates) if ctx.predictor is not None else [None] * len(candidates)
    run = {"fidelities": fidelities, "predicted_speedup": predicted, "scores": {str(f): [] for f in fidelities},
           "candidates": candidates, "seconds": 0.0}
    started = time.perf_counter()
    for i, cand in enumerate(candidates):
        for f, s in zip(fidelities, score(ctx, scoring, cand, fidelities, seed=i, cut=args.cut)):
            run["scores"][str(f)].append(s)
        run["seconds"] = time.perf_counter() - started
        speed = "" if predicted[i] is None else f" (predicted {predicted[i]:.2f}×)"
        print(f"candidate {i}{speed}: " + " ".join(f"{f:g}ep={run['scores'][str(f)][-1]:.4f}" for f in fidelities),
              flush=True)
        if args.json:
            done = {**run, "predicted_speedup": predicted[: i + 1], "candidates": candidates[: i + 1]}
            args.json.write_text(json.dumps(done, indent=1))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "studies/digits_blocks.yaml")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--fidelities", type=float, nargs="+", default=[0.5, 1, 4, 12],
                        help="fine-tune epochs per level; the last is the reference")
    parser.add_argument("--speedup", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                        help="candidates spanning this predicted speed-up range (needs a latency table)")
    parser.add_argument("--cut", action="store_true", help="one fine-tune per candidate, cut at each fidelity")
    parser.add_argument("--json", type=Path, default=None, help="also write every candidate's scores here")
    parser.add_argument("--report", type=Path, default=None, metavar="JSON",
                        help="write the table and section again from a --json file of an earlier run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quick", action="store_true", help="8 candidates, fidelities 0.5 1 4")
    args = parser.parse_args()
    if args.quick:
        args.candidates, args.fidelities = 8, [0.5, 1, 4]
    with tempfile.TemporaryDirectory() as tmp:  # a compression study trains its base (and its table) here
        config = load_config(args.recipe, [*args.overrides, f"output_dir={tmp}"])
        if args.report:
            run = json.loads(args.report.read_text())
            run["fidelities"] = [float(f) for f in run["fidelities"]]
        else:
            run = measure(args, config, sorted(args.fidelities))
    report(args, config, run)


if __name__ == "__main__":
    main()
