"""Kill points: the places between a write's steps where a crash leaves the store in a distinct state.

The store calls `point(name)` between the steps of add, supersede, delete, restore and clear. It does nothing
unless a test installed a hook (`tests/test_crash_safety.py` installs one that kills the process at the n-th
point), so a crash can be placed exactly between two writes instead of hoped for.
"""

from __future__ import annotations

from collections.abc import Callable

_hook: Callable[[str], None] | None = None


def point(name: str) -> None:
    if _hook is not None:
        _hook(name)


def install(hook: Callable[[str], None] | None) -> None:
    """Call `hook(name)` at every kill point (None: stop)."""
    global _hook
    _hook = hook
