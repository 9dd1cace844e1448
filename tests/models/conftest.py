"""Fixtures of the model-loading tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """A 200-image synthetic root with train/ (150) and val/ (50): cheaper than the embedded 5,000 images."""
    from mimlab.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("synth200")
    write_synthetic(str(root), num_images=200, size=32, classes=4, seed=0, split_val=0.25)
    return str(root)
