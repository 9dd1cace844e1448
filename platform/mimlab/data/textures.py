"""Two-tone fill textures of the synthetic dataset: each marks the "dark" pixels of an object.

Class ``k`` of the embedded dataset is shape ``SHAPE_ORDER[k]`` filled with texture ``TEXTURE_ORDER[k]``, so
a class is defined by form and texture together, never by colour (every class uses the same two colours).
Every texture is symmetric under a horizontal flip (the crop pipeline flips images), and none depends on the
image's absolute position: the phase is drawn per image.

A texture is a function ``(x, y, r, period, rng) -> bool [S,S]`` of pixel coordinates already shifted by the
random phase (``x``, ``y``), the distance to the object's centre (``r``), the period in pixels and the image's
generator (for the speckle texture).
"""

from __future__ import annotations

import numpy as np

from mimlab.registry import Registry

TEXTURES: Registry = Registry("synthetic texture")
TEXTURE_ORDER = ("solid", "hstripes", "vstripes", "checker", "dots", "grid", "lattice", "rings", "speckle",
                 "bands")


def _wave(t: np.ndarray, period: float) -> np.ndarray:
    return np.cos(2 * np.pi * t / period)


@TEXTURES.register("solid")
def solid(x: np.ndarray, y: np.ndarray, r: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    return np.zeros(x.shape, dtype=bool)


@TEXTURES.register("hstripes")
def hstripes(x, y, r, period, rng):
    return _wave(y, period) > 0


@TEXTURES.register("vstripes")
def vstripes(x, y, r, period, rng):
    return _wave(x, period) > 0


@TEXTURES.register("checker")
def checker(x, y, r, period, rng):
    return (_wave(x, period) > 0) ^ (_wave(y, period) > 0)


@TEXTURES.register("dots")
def dots(x, y, r, period, rng):
    return _wave(x, period) + _wave(y, period) > 1.0


@TEXTURES.register("grid")
def grid(x, y, r, period, rng):
    return (_wave(x, period) > 0.6) | (_wave(y, period) > 0.6)


@TEXTURES.register("lattice")
def lattice(x, y, r, period, rng):
    diagonal = period * np.sqrt(2.0)
    return (_wave(x + y, diagonal) > 0.6) | (_wave(x - y, diagonal) > 0.6)


@TEXTURES.register("rings")
def rings(x, y, r, period, rng):
    return _wave(r, period) > 0


@TEXTURES.register("speckle")
def speckle(x, y, r, period, rng):
    return rng.random(x.shape) < 0.5


@TEXTURES.register("bands")
def bands(x, y, r, period, rng):
    return _wave(y, 2.5 * period) > 0
