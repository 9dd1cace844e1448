"""Figures the platform writes leave the caller's matplotlib backend alone: ``matplotlib.use("Agg")`` inside them
switched a notebook's inline backend off, and every later ``plt.show()`` of the user showed nothing."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest


@pytest.fixture()
def svg_backend():
    """A backend other than Agg (svg needs no display), restored afterwards."""
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    yield "svg"
    matplotlib.use(before)


def test_explain_grid_saliency_bars_and_linear_curve_keep_the_backend_and_write_pngs(svg_backend, tmp_path):
    from mimlab.evaluation.api import _curve_figure
    from mimlab.explain.render import save_grid
    from mimlab.runtime.saliency import plot_table

    rng = np.random.default_rng(0)
    save_grid([rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)], ["a"], {"raw": rng.random((1, 8, 8))},
              tmp_path / "grid.png")
    plot_table({"raw": {"pointing": 0.5}}, {"pointing": True}, tmp_path / "bars.png", "t")
    _curve_figure({"curve": [1.0, 2.0], "curve_top5": [3.0, 4.0], "best_epoch": 2, "best_top1": 2.0,
                   "mode": "cached"}).savefig(tmp_path / "curve.png")
    assert matplotlib.get_backend() == svg_backend
    for name in ("grid.png", "bars.png", "curve.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
