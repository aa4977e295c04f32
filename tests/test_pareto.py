"""Front and hypervolume on points worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from search.results.front import hypervolume, pareto_mask


def test_pareto_mask():
    acc = np.array([0.9, 0.8, 0.95, 0.85, 0.95])
    lat = np.array([1.0, 0.5, 2.0, 1.5, 2.5])
    assert pareto_mask(acc, lat).tolist() == [True, True, True, False, False]


def test_hypervolume_by_hand():
    # points (lat, acc): (0.5, 0.8), (1.0, 0.9); reference latency 2, accuracy 0
    # area = (2-0.5)*0.8 + (2-1.0)*(0.9-0.8) = 1.2 + 0.1
    assert hypervolume([0.8, 0.9], [0.5, 1.0], ref_latency=2.0) == pytest.approx(1.3)
    assert hypervolume([0.8, 0.9, 0.7], [0.5, 1.0, 1.5], ref_latency=2.0) == pytest.approx(1.3)
    assert hypervolume([0.8], [3.0], ref_latency=2.0) == 0.0
