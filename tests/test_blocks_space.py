"""The blocks space samples JSON-able candidates that rebuild the same network anywhere."""

from __future__ import annotations

import json

import pytest
import torch

from search.errors import ConfigError
from search.recipe.config import load_config
from spaces import RandomSuggest, get_space
from spaces.blocks import BLOCKS
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


def test_default_study_samples_all_nine_blocks_and_each_builds():
    space = make_space()
    seen = set()
    for seed in range(60):
        candidate = space.sample(RandomSuggest(seed))
        seen |= {s["block"] for s in candidate["stages"]}
        if seed < 20:
            assert space.build(candidate).eval()(torch.randn(1, 1, 16, 16)).shape == (1, 10)
    assert seen == set(BLOCKS)


def test_describe_abbreviates_every_searched_option():
    config = load_config(ROOT / "studies" / "digits_blocks.yaml", ["space.blocks=[shuffle, fire, bottleneck]"])
    space = get_space("blocks")(config.space, in_channels=1, num_classes=10, image_size=16)
    for seed in range(10):
        candidate = space.sample(RandomSuggest(seed))
        line = space.describe(candidate)
        for part, stage in zip(line.split(" | ")[1:], candidate["stages"]):
            assert part.startswith(f"{stage['block']}×{stage['depth']} w{stage['width']}")
            assert not any(name in part for name in ("groups", "squeeze_ratio", "reduction", "kernel_size"))


def test_recipe_may_set_options_the_space_does_not_search():
    config = load_config(
        ROOT / "studies" / "digits_blocks.yaml", ["space.blocks=[fire]", "space.options={fire: {bypass: [false]}}"]
    )
    space = get_space("blocks")(config.space, in_channels=1, num_classes=10, image_size=16)
    candidate = space.sample(RandomSuggest(0))
    assert all(s["options"]["bypass"] is False for s in candidate["stages"])
    assert space.build(candidate)(torch.randn(2, 1, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["space.round_to=3", "space.stem_width=[9, 24]", "space.stages=[{width: [9, 30]}]"], "multiples of 2"),
        (["space.options={fire: {squeeze: [0.5]}}"], "unknown option(s) ['squeeze'] for block 'fire'"),
    ],
)
def test_channel_and_option_constraints_are_config_errors(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "studies" / "digits_blocks.yaml", overrides)
    assert expected in str(err.value)
