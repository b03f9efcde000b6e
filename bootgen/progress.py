"""Progress reports for long work: a callback that takes one line, and a step timer."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

Progress = Callable[[str], None]


class Steps:
    """Times each step; reports a step on `progress` only once it has run for a second."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.times: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        timer = None
        if self.progress is not None:
            timer = threading.Timer(1.0, self.progress, args=(f"{name}…",))
            timer.daemon = True
            timer.start()
        start = time.perf_counter()
        try:
            yield
        finally:
            if timer is not None:
                timer.cancel()
            self.times.append((name, time.perf_counter() - start))
