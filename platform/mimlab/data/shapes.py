"""Object shapes of the synthetic dataset: each draws a filled foreground (255) on a greyscale canvas.

Shapes differ in *form* (outline, holes, concavities), so a classifier cannot solve the task from colour.
Each is registered by name; :data:`SHAPE_ORDER` fixes the class index of each name.
"""

from __future__ import annotations

import math

from PIL import ImageDraw

from mimlab.registry import Registry

SHAPES: Registry = Registry("synthetic shape")
SHAPE_ORDER = ("circle", "square", "triangle", "star", "cross", "ring", "ellipse", "hexagon", "arrow", "crescent")


def _rotate(points: list[tuple[float, float]], cx: float, cy: float, angle: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _regular(n: int, r: float) -> list[tuple[float, float]]:
    return [(r * math.cos(2 * math.pi * k / n - math.pi / 2), r * math.sin(2 * math.pi * k / n - math.pi / 2))
            for k in range(n)]


def _disc(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: int) -> None:
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)


@SHAPES.register("circle")
def circle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    _disc(draw, cx, cy, r, 255)


@SHAPES.register("square")
def square(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    draw.polygon(_rotate(_regular(4, r * 1.05), cx, cy, angle), fill=255)


@SHAPES.register("triangle")
def triangle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    draw.polygon(_rotate(_regular(3, r * 1.1), cx, cy, angle), fill=255)


@SHAPES.register("star")
def star(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    outer, inner = _regular(5, r * 1.1), _regular(5, r * 0.45)
    inner = _rotate(inner, 0.0, 0.0, math.pi / 5)
    points = [p for pair in zip(outer, inner) for p in pair]
    draw.polygon(_rotate(points, cx, cy, angle), fill=255)


@SHAPES.register("cross")
def cross(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    w = 0.32 * r
    points = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w),
              (-w, -w)]
    draw.polygon(_rotate(points, cx, cy, angle), fill=255)


@SHAPES.register("ring")
def ring(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    _disc(draw, cx, cy, r, 255)
    _disc(draw, cx, cy, r * 0.55, 0)


@SHAPES.register("ellipse")
def ellipse(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    points = [(r * math.cos(t), 0.5 * r * math.sin(t)) for t in (2 * math.pi * k / 64 for k in range(64))]
    draw.polygon(_rotate(points, cx, cy, angle), fill=255)


@SHAPES.register("hexagon")
def hexagon(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    draw.polygon(_rotate(_regular(6, r), cx, cy, angle), fill=255)


@SHAPES.register("arrow")
def arrow(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    points = [(-r, -0.22 * r), (0.1 * r, -0.22 * r), (0.1 * r, -0.65 * r), (r, 0.0), (0.1 * r, 0.65 * r),
              (0.1 * r, 0.22 * r), (-r, 0.22 * r)]
    draw.polygon(_rotate(points, cx, cy, angle), fill=255)


@SHAPES.register("crescent")
def crescent(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    _disc(draw, cx, cy, r, 255)
    _disc(draw, cx + 0.5 * r * math.cos(angle), cy + 0.5 * r * math.sin(angle), r * 0.85, 0)
