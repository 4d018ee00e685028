"""A time bound for tests that must fail, not hang, when the code under test runs away."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def hang_bound(seconds: int = 60) -> Iterator[None]:
    """Fail (instead of hanging the test run) when the block takes longer than ``seconds``."""

    def alarm(*_):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
