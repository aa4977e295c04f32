"""A compress candidate in one line, and its ratios as candidates hold them."""

from __future__ import annotations

import statistics

from spaces.compress.config import GREEDY_POLICIES
from spaces.contract import Candidate


def round_ratio(value: float) -> float:
    """A keep or rank ratio as candidates hold it (six decimals, so equal policies compare equal)."""
    return round(float(value), 6)


def describe_policy(candidate: Candidate) -> str:
    """One line per candidate, e.g. `l1 keep 0.62 [0.25–1.00] | rank 0.50 ×3 | int8`,
    `bn_scale global keep 0.60 | rank 0.50 ×3 tucker2 ×2 | fp32`, `l1 greedy 2.00× ±3 keep 0.55 [0.25–1.00] | drop 6
    blocks | fp32` (a greedy_local policy, 3 moves from the greedy, that removes 6 residual blocks); a candidate cut from a sparsity-trained base
    starts with its λ, `base λ=0.001 | bn_scale global keep 0.40 | fp32`."""
    keep = list(candidate["keep"].values()) or [1.0]
    l1 = candidate.get("base", {}).get("l1")
    parts = [] if l1 is None else [f"base λ={l1:g}"]
    if candidate.get("policy", "group") == "global":
        parts.append(f"{candidate['importance']} global keep {keep[0]:.2f}")
    elif candidate.get("policy") in GREEDY_POLICIES:
        moved = f" ±{candidate['local']['moves']}" if candidate.get("local") else ""
        parts.append(f"{candidate['importance']} greedy {candidate['speedup']:.2f}×{moved} keep {statistics.fmean(keep):.2f} "
                     f"[{min(keep):.2f}–{max(keep):.2f}]")
    else:
        parts.append(f"{candidate['importance']} keep {statistics.fmean(keep):.2f} [{min(keep):.2f}–{max(keep):.2f}]")
    if candidate.get("drop"):
        parts.append(f"drop {len(candidate['drop'])} blocks")
    if candidate.get("rank"):
        ranks = list(candidate["rank"].values())
        tucker = sum(f == "tucker2" for f in (candidate.get("form") or {}).values())
        parts.append(f"rank {statistics.fmean(ranks):.2f} ×{len(ranks)}{f' tucker2 ×{tucker}' if tucker else ''}")
    parts.append(candidate.get("precision", "fp32"))
    return " | ".join(parts)
