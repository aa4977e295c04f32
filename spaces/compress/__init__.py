"""The `compress` space: a trained network made smaller — pruned channels, factorized layers, precision."""

from spaces.compress.compress import (
    POLICIES,
    check_exclusions,
    check_prunable,
    compress,
    factorizable_layers,
    global_keep_ratios,
    prunable_groups,
)
from spaces.compress.config import SparsityConfig
from spaces.compress.errors import CompressError
from spaces.compress.importance import CRITERIA
from spaces.compress.lowrank import FORMS
from spaces.compress.models import build_model, fingerprint, load_checkpoint
from spaces.compress.prune import PrunableGroup
from spaces.compress.space import CompressSpace, CompressSpaceConfig

__all__ = [
    "CRITERIA", "FORMS", "POLICIES", "CompressError", "CompressSpace", "CompressSpaceConfig", "PrunableGroup",
    "SparsityConfig", "build_model", "check_exclusions", "check_prunable", "compress", "factorizable_layers", "fingerprint", "global_keep_ratios", "load_checkpoint",
    "prunable_groups",
]
