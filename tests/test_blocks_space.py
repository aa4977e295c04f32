"""The blocks space samples JSON-able candidates that rebuild the same network anywhere."""

from __future__ import annotations

import json

import torch

from search.config import load_config
from spaces import RandomSuggest, get_space
from tests.conftest import ROOT


def make_space():
    config = load_config(ROOT / "studies" / "digits_blocks.yaml")
    return get_space("blocks")(config.space, in_channels=1, num_classes=10, image_size=16)


def test_sample_build_forward_and_rebuild():
    space = make_space()
    for seed in range(8):
        candidate = space.sample(RandomSuggest(seed))
        again = json.loads(json.dumps(candidate))
        assert again == candidate
        model = space.build(candidate).eval()
        out = model(torch.randn(2, 1, 16, 16))
        assert out.shape == (2, 10)
        twin = space.build(again).eval()
        twin.load_state_dict(model.state_dict())
        x = torch.randn(1, 1, 16, 16)
        assert torch.equal(model(x), twin(x))
        assert str(model) == str(twin)


def test_same_seed_same_candidate_and_widths_round_to_8():
    space = make_space()
    a, b = space.sample(RandomSuggest(3)), space.sample(RandomSuggest(3))
    assert a == b
    for seed in range(20):
        c = space.sample(RandomSuggest(seed))
        assert c["stem"]["width"] % 8 == 0
        assert all(s["width"] % 8 == 0 for s in c["stages"])


def test_recipe_narrows_block_options():
    config = load_config(
        ROOT / "studies" / "digits_blocks.yaml",
        ["space.blocks=[mbconv]", "space.options={mbconv: {expand_ratio: [4], kernel_size: [5]}}"],
    )
    space = get_space("blocks")(config.space, in_channels=1, num_classes=10, image_size=16)
    for seed in range(5):
        c = space.sample(RandomSuggest(seed))
        assert all(s["block"] == "mbconv" and s["options"] == {"kernel_size": 5, "expand_ratio": 4}
                   for s in c["stages"])
