"""The one error of the compress package."""

from __future__ import annotations


class CompressError(ValueError):
    """A network or a policy that cannot be compressed; the message names the layer or key and what to do."""
