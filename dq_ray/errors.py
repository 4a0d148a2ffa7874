"""The exceptions users meet before any work starts. A leaf: it imports nothing of dq-ray's."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config (or policy, or stage parameter) that cannot run. The message says which key and what would be
    valid."""
