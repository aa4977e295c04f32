"""What a candidate is and how it becomes an `nn.Module`. Knows nothing of training or latency."""

from spaces.registry import SPACES, Candidate, Space, get_space, register_space
from spaces.suggest import RandomSuggest, Suggest
from spaces import blocks  # noqa: F401  (registers the `blocks` space)
from spaces import compress  # noqa: F401  (registers the `compress` space)

__all__ = ["SPACES", "Candidate", "RandomSuggest", "Space", "Suggest", "get_space", "register_space"]
