"""What a candidate is and how it becomes an `nn.Module`. Knows nothing of training or latency."""

from spaces import (
    blocks,  # noqa: F401  (registers the `blocks` space)
    compress,  # noqa: F401  (registers the `compress` space)
)
from spaces.contract import SPACES, Candidate, Space, Unit, get_space, register_space
from spaces.suggest import RandomSuggest, Suggest

__all__ = ["SPACES", "Candidate", "RandomSuggest", "Space", "Suggest", "Unit", "get_space", "register_space"]
