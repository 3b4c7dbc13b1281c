"""Wall time of a round's stages, summed over every attempt at the round.

A killed round resumes in the stage it was in. What its killed attempts spent is kept in
``round-NNN/clock.json``, written at each stage boundary and every ``flush_seconds``
inside a stage, so the resumed round's record counts it (to within one flush period).
The file also says which stage is running, for a person (or a soak test) watching::

    {"attempts": 2, "stage": "train", "seconds": {"explore": 12.3, "train": 40.1}}
"""

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from sapis.background import every
from sapis.io import write_text_atomically


class StageClock:
    """Seconds per stage of one round, persisted in ``path`` across attempts."""

    def __init__(self, path: str | Path, flush_seconds: float = 2.0) -> None:
        self.path = Path(path)
        self.flush_seconds = flush_seconds
        saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.seconds: dict[str, float] = dict(saved.get("seconds", {}))
        self.attempts: int = int(saved.get("attempts", 0))
        self.stage_name: str | None = None
        self._lock = threading.Lock()

    def new_attempt(self) -> "StageClock":
        """Count one more attempt at the round (a first run or a resume) and save."""
        self.attempts += 1
        self._save()
        return self

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to stage ``name``, saving it as it runs."""
        base, started = self.seconds.get(name, 0.0), time.perf_counter()

        def elapsed() -> None:
            with self._lock:
                self.seconds[name] = round(base + time.perf_counter() - started, 2)

        def tick() -> None:
            elapsed()
            self._save()

        self.stage_name = name
        self._save()
        try:
            with every(self.flush_seconds, tick, f"clock-{name}"):
                yield
        finally:
            elapsed()
            self.stage_name = None
            self._save()

    def _save(self) -> None:
        with self._lock, contextlib.suppress(OSError):  # a full disk: the stage says so
            data = {"attempts": self.attempts, "stage": self.stage_name, "seconds": self.seconds}
            write_text_atomically(self.path, json.dumps(data, indent=1))
