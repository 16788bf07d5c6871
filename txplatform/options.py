# -*- test-case-name: tests.plugins.test_options -*-
"""
Checks for the command-line options a service declares (see
L{txplatform.catalogue.ServiceDeclaration.check}): each raises
L{twisted.python.usage.UsageError} with a one-line reason.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.python.usage import UsageError

__all__ = ["checkPositive", "checkNotNegative"]


def checkPositive(options: Mapping[str, Any], *names: str) -> None:
    """
    Each named option is above zero.
    """
    for name in names:
        if options[name] <= 0:
            raise UsageError(f"--{name} must be positive, not {options[name]}")


def checkNotNegative(options: Mapping[str, Any], *names: str) -> None:
    """
    Each named option is zero or more.
    """
    for name in names:
        if options[name] < 0:
            raise UsageError(f"--{name} cannot be negative")
