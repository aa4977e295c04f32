"""The lightweight block library: one `nn.Module` per block, registered by name in `BLOCKS`.

Every block is built as `BLOCKS[name](in_channels, out_channels, stride=1, **options)`, and
`BLOCKS[name].param_count(in_channels, out_channels, stride, **options)` gives its parameter count in
closed form. `SEARCH_OPTIONS` on each class lists the option values the `blocks` space searches by default;
a recipe may narrow or widen them.

| name         | block                                              | module        |
| ------------ | -------------------------------------------------- | ------------- |
| `conv`       | k×k conv + BN + ReLU                               | basic.py      |
| `crelu`      | C.ReLU: half the channels, concatenated negated    | basic.py      |
| `dwsep`      | MobileNet V1 depthwise-separable conv              | mobilenet.py  |
| `mbconv`     | MobileNet V2 inverted residual                     | mobilenet.py  |
| `shuffle`    | ShuffleNet V1 unit (group conv, channel shuffle)   | shufflenet.py |
| `shufflev2`  | ShuffleNet V2 unit (channel split)                 | shufflenet.py |
| `fire`       | SqueezeNet fire module                             | squeezenet.py |
| `bottleneck` | ResNet / ENet bottleneck                           | residual.py   |
| `factorized` | ERFNet non-bottleneck-1D (k×1, 1×k)                | residual.py   |
"""

from spaces.blocks import basic, mobilenet, residual, shufflenet, squeezenet  # noqa: F401  (register the blocks)
from spaces.blocks.base import BLOCKS, Block, register_block

__all__ = ["BLOCKS", "Block", "register_block"]
