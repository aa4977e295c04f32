"""The model card's line against the base says each number in its own unit."""

from search.export.card import versus_base_line


def test_ratios_read_as_times_and_shares_as_percentages():
    line = versus_base_line({"compression": 2.592, "flops_reduction": 0.334, "speedup": 0.454,
                             "accuracy_change": -0.012})
    assert line == "params 2.59× fewer, FLOPs -33.4%, speedup 0.45×, accuracy -1.20 points"
