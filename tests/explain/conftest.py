"""Fixtures for the explainer tests; the tiny models live in explain_models.py."""

from __future__ import annotations

import pytest
import torch
from explain_models import tiny_cnn, tiny_vit

from mimlab.models.loading import LoadedModel


@pytest.fixture(scope="module")
def vit() -> LoadedModel:
    return tiny_vit()


@pytest.fixture(scope="module")
def cnn() -> LoadedModel:
    return tiny_cnn()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
