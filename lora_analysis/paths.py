"""Paths the user typed: ``~`` and ``~user`` expanded as a shell does, an unknown user's ``~name`` kept as typed."""

from __future__ import annotations

from pathlib import Path


def user_path(text: str | Path) -> Path:
    """``Path(text).expanduser()``, except that ``~nobody/x`` for a user that does not exist (or ``~`` without a
    home) stays the relative path it was typed as, as in bash, instead of raising RuntimeError."""
    path = Path(text)
    try:
        return path.expanduser()
    except RuntimeError:
        return path
