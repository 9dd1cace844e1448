"""Method spec strings: ``name[:key=value,...]`` (e.g. ``rollout:layers=9-12,order=ascending``).

Layers in specs are **1-based** as in the thesis (``raw:layer=12`` is the last block of a 12-block ViT).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mimlab.errors import UserError, did_you_mean


@dataclass(frozen=True)
class MethodSpec:
    name: str
    params: dict[str, str] = field(default_factory=dict)
    text: str = ""

    def check_keys(self, allowed: set[str] | frozenset[str]) -> None:
        """Fail with a clear message on a key the method does not take."""
        for key in self.params:
            if key not in allowed:
                valid = ", ".join(sorted(allowed)) or "none"
                raise UserError(
                    f"method '{self.name}' has no key '{key}'{did_you_mean(key, allowed)}; valid keys: {valid}"
                )

    def get_int(self, key: str, default: int | None = None) -> int | None:
        if key not in self.params:
            return default
        try:
            return int(self.params[key])
        except ValueError:
            raise UserError(f"method '{self.text}': key '{key}' must be an integer, got '{self.params[key]}'") from None

    def get_float(self, key: str, default: float | None = None) -> float | None:
        if key not in self.params:
            return default
        try:
            return float(self.params[key])
        except ValueError:
            raise UserError(f"method '{self.text}': key '{key}' must be a number, got '{self.params[key]}'") from None

    def get_range(self, key: str, default: tuple[int, int] | None = None) -> tuple[int, int] | None:
        """Parse ``A-B`` (inclusive, 1-based) or a single ``A`` into ``(A, B)``."""
        if key not in self.params:
            return default
        raw = self.params[key]
        parts = raw.split("-")
        try:
            if len(parts) == 1:
                a = b = int(parts[0])
            elif len(parts) == 2:
                a, b = int(parts[0]), int(parts[1])
            else:
                raise ValueError
        except ValueError:
            raise UserError(f"method '{self.text}': key '{key}' must look like A-B (e.g. 9-12), got '{raw}'") from None
        if a > b:
            raise UserError(f"method '{self.text}': key '{key}' range {raw} is empty (A must be <= B)")
        return a, b


def parse_spec(text: str) -> MethodSpec:
    """Parse ``name[:key=value,...]``; whitespace around parts is ignored."""
    text = text.strip()
    if not text:
        raise UserError("empty method spec")
    name, _, rest = text.partition(":")
    params: dict[str, str] = {}
    if rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise UserError(f"method spec '{text}': expected key=value, got '{item}'")
            params[key.strip()] = value.strip()
    return MethodSpec(name.strip(), params, text)


def check_layer(layer: int, depth: int, what: str = "layer") -> int:
    """Validate a 1-based layer against the model depth and return the 0-based index."""
    if not 1 <= layer <= depth:
        raise UserError(f"{what} {layer} is outside 1..{depth} (layers are 1-based; the model has {depth} blocks)")
    return layer - 1
