"""Logging of every stage: one line format on stderr (the job's log file), the level from `--log-level`, and
progress lines every N steps of a long loop (a bar's carriage returns would garble a log file)."""

from __future__ import annotations

import logging
import sys
import time

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def checked_level(value: str) -> str:
    """`value` as one of LEVELS (any case), or a ValueError naming Snakemake's `--config log_level`."""
    level = value.upper()
    if level not in LEVELS:
        raise ValueError(f"--config log_level={value}: must be one of {', '.join(LEVELS)}")
    return level


def setup(level: str) -> None:
    """Send every logger's records at `level` and above to stderr, one line each with time, level and logger."""
    logging.basicConfig(level=level, format=FORMAT, datefmt="%Y-%m-%d %H:%M:%S", stream=sys.stderr, force=True)


def clock(seconds: float) -> str:
    """`seconds` as h:mm:ss."""
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class Progress:
    """Logs `label k/total (p %) <figures> | s per item, time left` every `every` items and at the last one.
    `start`: items already done before this process (a resumed run), left out of the rate."""

    def __init__(self, log: logging.Logger, label: str, total: int, every: int, start: int = 0):
        self.log, self.label, self.total, self.every, self.start = log, label, total, every, start
        self.began = time.perf_counter()

    def update(self, done: int, **figures: float | str) -> None:
        if done % self.every and done != self.total:
            return
        rate = (time.perf_counter() - self.began) / max(done - self.start, 1)
        shown = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        self.log.info("%s %d/%d (%.0f %%) %s | %.3f s/%s, %s left", self.label, done, self.total,
                      100 * done / self.total, shown, rate, self.label, clock(rate * (self.total - done)))
