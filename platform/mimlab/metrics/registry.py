"""The metric registry (its own module so metric modules can import it without a cycle)."""

from mimlab.registry import Registry

METRICS = Registry("metric")
