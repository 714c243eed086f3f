"""Progress for long work: a rich bar on a terminal, plain periodic lines when output is redirected.

The library reports through the small interface `rich.progress.Progress` already has
(`add_task(description, total)`, `advance(task, n)`, `update(task, description=...)`), so any of
these can be passed as `progress=` to `evaluate`, `analyze` or `run_experiment`.

`ALIGNLENS_PROGRESS` chooses: `bar` (rich bar), `lines` (a plain line every
`ALIGNLENS_PROGRESS_SECONDS`, default 10 s: item counts, rate and ETA, fit for CI logs, nohup and
`| tee`), `off`. Unset: `bar` on a terminal, `lines` otherwise. Other values of either variable
are refused (`check_env`, which the CLI runs at start-up).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from alignlens import AlignlensError

#: ALIGNLENS_PROGRESS values: the modes, and the aliases that mean bar or off.
MODES = ("bar", "lines", "off")
_ALIASES = {"1": "bar", "true": "bar", "on": "bar", "0": "off", "false": "off", "none": "off"}


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    started: float = field(default_factory=time.monotonic)
    last_print: float = field(default_factory=time.monotonic)


class LineProgress:
    """Plain-text progress: one line per task every `every` seconds, and one when it completes."""

    def __init__(self, stream: TextIO | None = None, every: float | None = None) -> None:
        self.stream = stream or sys.stderr
        self.every = every if every is not None else progress_seconds()
        self.tasks: list[_Task] = []

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, **_: Any) -> int:
        self.tasks.append(_Task(description, total))
        return len(self.tasks) - 1

    def update(self, task: int, *, description: str | None = None, completed: float | None = None,
               advance: float | None = None, total: float | None = None, **_: Any) -> None:
        t = self.tasks[task]
        if description is not None:
            t.description = description
        if total is not None:
            t.total = total
        if completed is not None:
            t.completed = completed
        if advance:
            t.completed += advance
        self._maybe_print(t)

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def line(self, t: _Task) -> str:
        elapsed = time.monotonic() - t.started
        if t.total:
            frac = min(1.0, t.completed / t.total)
            rate = t.completed / elapsed if elapsed > 0 else 0.0
            eta = (t.total - t.completed) / rate if rate > 0 else None
            return (f"{t.description}: {t.completed:.0f}/{t.total:.0f} ({100 * frac:.0f}%), "
                    f"{_duration(elapsed)} elapsed" + (f", eta {_duration(eta)}" if eta is not None and frac < 1 else ""))
        return f"{t.description}: {t.completed:.0f} done, {_duration(elapsed)} elapsed"

    def _maybe_print(self, t: _Task) -> None:
        now = time.monotonic()
        done = t.total is not None and t.completed >= t.total
        if now - t.last_print >= self.every or done:
            t.last_print = now if not done else float("inf")  # a finished task prints once
            print(f"[{time.strftime('%H:%M:%S')}] {self.line(t)}", file=self.stream, flush=True)


def progress_seconds() -> float:
    """Seconds between progress lines: ALIGNLENS_PROGRESS_SECONDS (default 10; 0: a line on every
    update). AlignlensError naming the variable for anything but a finite number >= 0."""
    raw = os.environ.get("ALIGNLENS_PROGRESS_SECONDS", "").strip()
    if not raw:
        return 10.0
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise AlignlensError(f"ALIGNLENS_PROGRESS_SECONDS={raw!r} is not a number of seconds >= 0 "
                             f"(e.g. 10; unset it for the default)")
    return seconds


def progress_mode(is_terminal: bool) -> str:
    """`bar`, `lines` or `off`, from ALIGNLENS_PROGRESS (unset or empty: bar on a terminal, else lines;
    1/true/on mean bar, 0/false/none off). AlignlensError naming the variable for another value."""
    raw = os.environ.get("ALIGNLENS_PROGRESS", "").strip()
    mode = _ALIASES.get(raw.lower(), raw.lower())
    if not mode:
        return "bar" if is_terminal else "lines"
    if mode not in MODES:
        raise AlignlensError(f"ALIGNLENS_PROGRESS={raw!r} is not one of {', '.join(MODES)} (unset it for a bar on "
                             f"a terminal and plain lines otherwise)")
    return mode


def check_env() -> None:
    """Refuse a bad ALIGNLENS_PROGRESS or ALIGNLENS_PROGRESS_SECONDS before any work starts."""
    progress_mode(False)
    progress_seconds()
