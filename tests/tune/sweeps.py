"""Helpers of the sweep tests, imported by name (``from sweeps import …``): ``from conftest import`` picks whichever
conftest loaded first."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def write_sweep(root: Path, name: str, strategies: list[str], profile: str = "tiny") -> None:
    """A sweep over masking strategies at the tiny profile, named ``name``."""
    values = ", ".join(f'"{s}"' for s in strategies)
    (root / f"{name}.yaml").write_text(
        f"name: {name}\ndefault_profile: {profile}\nsweep:\n  masking.strategy: [{values}]\n")
