"""Fixtures for the masking tests: a fake capture with known attention, and a tiny real timm ViT."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import pytest
import torch

DEPTH, HEADS, GRID = 4, 2, (8, 8)
N = GRID[0] * GRID[1]


@dataclass
class FakeCapture:
    """What AttentionCapture exposes to masking: attn/logits/keys per 0-based block, num_prefix_tokens."""

    attn: dict = field(default_factory=dict)
    logits: dict = field(default_factory=dict)
    keys: dict = field(default_factory=dict)
    num_prefix_tokens: int = 1


def make_capture(batch: int, seed: int = 0, depth: int = DEPTH, heads: int = HEADS, n: int = N, prefix: int = 1):
    """Random logits (sharp enough to give distinct rankings) and their softmax for every block.

    Cached (random tensors of 1000 images take seconds on a busy 2-core machine); every call returns fresh dicts,
    so a test may replace entries, never modify tensors in place.
    """
    cached = _make_capture(batch, seed, depth, heads, n, prefix)
    return FakeCapture(dict(cached.attn), dict(cached.logits), dict(cached.keys), cached.num_prefix_tokens)


@functools.lru_cache(maxsize=16)
def _make_capture(batch: int, seed: int, depth: int, heads: int, n: int, prefix: int) -> FakeCapture:
    gen = torch.Generator().manual_seed(seed)
    cap = FakeCapture(num_prefix_tokens=prefix)
    t = n + prefix
    for l in range(depth):
        logits = 3.0 * torch.randn(batch, heads, t, t, generator=gen)
        cap.logits[l] = logits
        cap.attn[l] = logits.softmax(-1)
        cap.keys[l] = torch.randn(batch, heads, t, 4, generator=gen)
    return cap


@pytest.fixture()
def gen():
    return torch.Generator().manual_seed(1234)
