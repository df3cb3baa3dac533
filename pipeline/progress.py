"""Progress of long work: a tqdm bar on a terminal, periodic log lines everywhere else.

One reporter, :class:`Progress`, serves training, embedding, index building, head fitting and queries. On a
terminal (``sys.stderr.isatty()``) it draws a tqdm bar. Without one (Snakemake, SLURM, ``2> log``) a bar is
useless, so it writes an INFO line through the caller's logger at most every ``OMICSCLIP_PROGRESS_SECONDS``
seconds, e.g.::

    train: epoch 3/150 step 1,200/2,734 (44%) 5,210 cells/s, loss 3.21, ETA epoch 4m51s, run 2h10m

and, when it wrote any such line, a final one on close. Work shorter than the interval therefore adds nothing to
a log. ``OMICSCLIP_PROGRESS_SECONDS`` is a runtime setting of the logging, not of the results (it is read here,
not from the config): default :data:`DEFAULT_SECONDS`, ``0`` = a line at every update.

Updates are meant per step or per chunk, never per cell: each costs a clock read and a comparison; the line (and
any postfix value given as a callable, e.g. a loss that needs a device sync) is only computed when it is written.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

from omicsclip.errors import InputError

#: Environment variable: seconds between progress log lines when stderr is not a terminal (0 = every update).
ENV_SECONDS = "OMICSCLIP_PROGRESS_SECONDS"
#: Seconds between progress log lines when :data:`ENV_SECONDS` is not set.
DEFAULT_SECONDS = 30.0
_BAR_POSTFIX_SECONDS = 0.5  # how often the terminal bar's postfix (rate, loss, ETA) is recomputed

__all__ = ["DEFAULT_SECONDS", "ENV_SECONDS", "Progress", "format_duration", "log_interval"]


def log_interval() -> float:
    """Return the seconds between progress log lines: :data:`ENV_SECONDS`, or :data:`DEFAULT_SECONDS` unset.

    Raises
    ------
    InputError
        The variable is not a finite number >= 0.
    """
    raw = os.environ.get(ENV_SECONDS)
    if raw is None or not raw.strip():
        return DEFAULT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{ENV_SECONDS}={raw!r}: expected seconds between progress lines, a number >= 0 "
                         f"(0 = every update; unset = {DEFAULT_SECONDS:g})")
    return value


def peak_rss_mb() -> float:
    """Return the peak resident set size of the calling process in MB (``VmHWM``).

    ``getrusage``'s ``ru_maxrss`` is not used where ``/proc`` exists: Linux carries the launching process's
    high-water mark into a child across fork and exec, so under Snakemake, a notebook's subprocess or a benchmark
    ``ru_maxrss`` reports at least the parent's peak, not this process's.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:  # not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KB on Linux (bytes on macOS)


def format_duration(seconds: float) -> str:
    """Return a short duration: ``42s``, ``4m51s``, ``2h10m``, ``3d04h`` (``?`` when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86_400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86_400}d{s % 86_400 // 3600:02d}h"


def _format_rate(rate: float) -> str:
    if rate >= 10:
        return f"{rate:,.0f}"
    return f"{rate:.1f}" if rate >= 1 else f"{rate:.2g}"


def _format_value(value: Any) -> str:
    if callable(value):
        value = value()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """Report the progress of ``total`` units of work: a tqdm bar on a terminal, else periodic INFO log lines.

    Use it as a context manager and call :meth:`update` after each step or chunk.

    Parameters
    ----------
    total
        Units of work in all (steps, cells).
    desc
        What is running (the bar's label, the start of each log line), e.g. ``train``, ``embed``.
    unit
        Name of a unit, e.g. ``cells`` or ``step``.
    logger
        Where the log lines go (the caller's module logger).
    every_s
        Seconds between log lines; ``None`` reads :func:`log_interval` (``OMICSCLIP_PROGRESS_SECONDS``).
    enabled
        ``False`` reports nothing and costs nothing (e.g. ranks other than 0 under DDP).
    initial
        Units already done (a resumed run); rates and ETAs count only the work done here.
    period, period_name
        Units per period (e.g. optimiser steps per epoch) and its name: lines then show the period and the unit
        within it (``epoch 3/150 step 1,200/2,734 (44%)``) and the ETA of both the period and the whole run.
    rate_scale, rate_unit
        One unit is ``rate_scale`` ``rate_unit`` (a step of 4,096 cells: ``4096``, ``"cells"``), and the rate is
        shown in ``rate_unit`` per second; default: units per second.
    tty
        Draw a bar (``True``) or write log lines (``False``); ``None``: whether stderr is a terminal.
    clock
        Monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(self, total: int, desc: str, unit: str = "it", *, logger: logging.Logger,
                 every_s: float | None = None, enabled: bool = True, initial: int = 0, period: int | None = None,
                 period_name: str = "epoch", rate_scale: float = 1.0, rate_unit: str | None = None,
                 tty: bool | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = int(total)
        self.desc = desc
        self.unit = unit
        self.log = logger
        self.enabled = bool(enabled)
        self.initial = self.n = int(initial)
        self.period = int(period) if period else None
        self.period_name = period_name
        self.rate_scale = float(rate_scale)
        self.rate_unit = rate_unit or unit
        self.clock = clock
        self.postfix: dict[str, Any] = {}
        self.lines = 0  # log lines written so far
        self._bar: Any = None
        self._every = 0.0
        self.t0 = self._last = self.clock()
        self.tty = False
        if not self.enabled:
            return
        self.tty = sys.stderr.isatty() if tty is None else bool(tty)
        if self.tty:
            from tqdm.auto import tqdm

            self._every = _BAR_POSTFIX_SECONDS
            self._bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit, dynamic_ncols=True)
        else:
            self._every = log_interval() if every_s is None else float(every_s)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(failed=exc_type is not None)

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n`` units; ``postfix`` values (or callables giving them) join the line as ``name value``.

        Postfix values are kept until replaced; callables are only called when a line or the bar is drawn.
        """
        if not self.enabled:
            return
        self.n += n
        if postfix:
            self.postfix.update(postfix)
        now = self.clock()
        due = now - self._last >= self._every
        if self._bar is not None:
            if due:
                self._last = now
                self._bar.set_postfix_str(", ".join(self._fields(now, with_position=False)), refresh=False)
            self._bar.update(n)
        elif due:
            self._last = now
            self.lines += 1
            self.log.info("%s", self._line(now))

    def set_postfix(self, **postfix: Any) -> None:
        """Set postfix values without advancing (shown with the next line or bar refresh)."""
        if self.enabled:
            self.postfix.update(postfix)

    def close(self, *, failed: bool = False) -> None:
        """Close the bar, or write the final log line (when any line was written); safe to call twice.

        Parameters
        ----------
        failed
            The work stopped on an error: the line says ``stopped at``, and postfix callables are not called
            (they might fail too and hide the error).
        """
        if not self.enabled:
            return
        self.enabled = False
        if self._bar is not None:
            fields = self._fields(self.clock(), with_position=False, with_eta=False, call=not failed)
            self._bar.set_postfix_str(", ".join(fields), refresh=False)  # the final state, not the last refresh
            self._bar.close()
            return
        if self.lines:
            now = self.clock()
            what = "stopped at" if failed else "finished"
            fields = self._fields(now, with_position=False, with_eta=False, call=not failed)
            self.log.info("%s: %s %s in %s%s", self.desc, what, self._position(), format_duration(now - self.t0),
                          "".join(f", {f}" for f in fields))

    # ------------------------------------------------------------------------------------------ rendering
    def rate(self, now: float | None = None) -> float:
        """Units per second since the start (``nan`` before any)."""
        elapsed = (self.clock() if now is None else now) - self.t0
        done = self.n - self.initial
        return done / elapsed if done > 0 and elapsed > 0 else math.nan

    def _current_period(self) -> int:
        return max(1, math.ceil(self.n / self.period))  # the last unit of a period still belongs to it

    def _period_label(self) -> str:
        periods = max(1, math.ceil(self.total / self.period))
        return f"{self.period_name} {self._current_period()}/{periods}"

    def _position(self) -> str:
        if self.period is None:
            pct = 100.0 * self.n / self.total if self.total else 100.0
            return f"{self.n:,}/{self.total:,} {self.unit} ({pct:.0f}%)"
        within = self.n - (self._current_period() - 1) * self.period
        return (f"{self._period_label()} {self.unit} {within:,}/{self.period:,} "
                f"({100.0 * within / self.period:.0f}%)")

    def _fields(self, now: float, *, with_position: bool = True, with_eta: bool = True,
                call: bool = True) -> list[str]:
        fields = [self._position()] if with_position else []
        if self._bar is not None and self.period is not None:
            fields.append(self._period_label())  # the bar counts units of the whole run, not periods
        rate = self.rate(now)
        shown_by_bar = self._bar is not None and self.rate_scale == 1 and self.rate_unit == self.unit
        if math.isfinite(rate) and not shown_by_bar:
            fields.append(f"{_format_rate(rate * self.rate_scale)} {self.rate_unit}/s")
        fields += [f"{k} {_format_value(v)}" for k, v in self.postfix.items() if call or not callable(v)]
        if not with_eta:
            return fields
        left = format_duration(max(self.total - self.n, 0) / rate if math.isfinite(rate) else math.nan)
        if self.period is None:
            if self._bar is None:  # a bar shows the ETA of its total itself
                fields.append(f"ETA {left}")
            return fields
        period_left = format_duration((-self.n) % self.period / rate if math.isfinite(rate) else math.nan)
        fields.append(f"ETA {self.period_name} {period_left}" + (f", run {left}" if self._bar is None else ""))
        return fields

    def _line(self, now: float) -> str:
        position, *rest = self._fields(now)
        return f"{self.desc}: {position}" + (" " + ", ".join(rest) if rest else "")
