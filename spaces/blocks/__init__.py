"""Lightweight blocks and the block-based architecture space."""

from spaces.blocks.library import BLOCKS, Block, register_block
from spaces.blocks.space import BlockNet, BlocksSpace, BlocksSpaceConfig

__all__ = ["BLOCKS", "Block", "BlockNet", "BlocksSpace", "BlocksSpaceConfig", "register_block"]
