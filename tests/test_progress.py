"""The progress reporter: log lines without a terminal (rate, ETA, interval, final line), a tqdm bar with one."""

from __future__ import annotations

import logging

import pytest

from omicsclip.errors import InputError
from omicsclip.progress import DEFAULT_SECONDS, ENV_SECONDS, Progress, format_duration, log_interval

LOG = logging.getLogger("omicsclip.tests.progress")


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOG.name]


def test_log_lines_show_rate_and_eta(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger=LOG.name)
    with Progress(1000, "embed", "cells", logger=LOG, every_s=0, tty=False, clock=clock) as p:
        clock.t += 2.0
        p.update(250)
    first, final = _lines(caplog)
    assert first == "embed: 250/1,000 cells (25%) 125 cells/s, ETA 6s"
    assert final == "embed: finished 250/1,000 cells (25%) in 2s, 125 cells/s"


def test_periods_show_epoch_step_cells_per_second_and_both_etas(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger=LOG.name)
    calls = []

    def loss() -> float:
        calls.append(1)
        return 3.2109

    p = Progress(150 * 2734, "train", "step", logger=LOG, every_s=30, tty=False, clock=clock, initial=2 * 2734,
                 period=2734, rate_scale=4096, rate_unit="cells")
    for _ in range(1200):
        clock.t += 1 / 32  # 32 steps/s, exact in binary: the 30 s line falls on step 960
        p.update(1, loss=loss)
    p.close()
    lines = _lines(caplog)
    assert len(lines) == 2
    assert len(calls) == len(lines)  # the callable is evaluated only for lines written, never per update
    assert lines[0] == ("train: epoch 3/150 step 960/2,734 (35%) 131,072 cells/s, loss 3.211, ETA epoch 55s, run "
                        + format_duration((150 * 2734 - 2 * 2734 - 960) / 32))
    assert lines[1] == "train: finished epoch 3/150 step 1,200/2,734 (44%) in 38s, 131,072 cells/s, loss 3.211"


def test_interval_is_respected(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger=LOG.name)
    with Progress(100, "index rna", "cells", logger=LOG, every_s=10, tty=False, clock=clock) as p:
        for _ in range(100):
            clock.t += 1.0
            p.update(1)
    lines = _lines(caplog)
    assert len(lines) == 10 + 1  # one every 10 s of 100 s, then the final line
    assert lines[0].startswith("index rna: 10/100 cells (10%)")
    assert lines[-1].startswith("index rna: finished 100/100 cells (100%) in 1m40s")


def test_short_work_logs_nothing(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger=LOG.name)
    with Progress(10, "query", "cells", logger=LOG, every_s=30, tty=False, clock=clock) as p:
        clock.t += 5
        p.update(10)
    assert _lines(caplog) == []


def test_failure_final_line_says_stopped(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger=LOG.name)
    p = Progress(10, "query", "cells", logger=LOG, every_s=0, tty=False, clock=clock)

    def work() -> None:
        with p:
            clock.t += 1
            p.update(3, loss=1.5)
            p.set_postfix(loss=lambda: pytest.fail("a postfix callable is called after an error"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        work()
    assert _lines(caplog)[-1] == "query: stopped at 3/10 cells (30%) in 1s, 3.0 cells/s"


def test_disabled_reports_nothing(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger=LOG.name)
    monkeypatch.setenv(ENV_SECONDS, "not a number")  # not even read when disabled
    with Progress(10, "train", "step", logger=LOG, enabled=False, tty=False) as p:
        p.update(10, loss=lambda: pytest.fail("evaluated while disabled"))
    assert _lines(caplog) == []


def test_tty_uses_tqdm(monkeypatch, caplog):
    import tqdm.auto

    made = []

    class FakeBar:
        def __init__(self, **kwargs):
            self.kwargs, self.n, self.postfixes, self.closed = kwargs, kwargs["initial"], [], False
            made.append(self)

        def update(self, n):
            self.n += n

        def set_postfix_str(self, s, refresh=True):
            self.postfixes.append(s)

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger=LOG.name)
    with Progress(20, "train", "step", logger=LOG, tty=True, clock=clock, period=10, rate_scale=64,
                  rate_unit="cells") as p:
        for _ in range(12):
            clock.t += 1
            p.update(1, loss=1.5)
    (bar,) = made
    assert (bar.kwargs["total"], bar.kwargs["desc"], bar.kwargs["unit"]) == (20, "train", "step")
    assert (bar.n, bar.closed) == (12, True)
    assert bar.postfixes[-2] == "epoch 2/2, 64 cells/s, loss 1.5, ETA epoch 8s"  # tqdm shows the run's ETA
    assert bar.postfixes[-1] == "epoch 2/2, 64 cells/s, loss 1.5"  # the final state, on close
    assert _lines(caplog) == []  # the bar is the record on a terminal


def test_interval_from_environment(monkeypatch):
    monkeypatch.delenv(ENV_SECONDS, raising=False)
    assert log_interval() == DEFAULT_SECONDS == 30
    monkeypatch.setenv(ENV_SECONDS, "0")
    assert log_interval() == 0
    monkeypatch.setenv(ENV_SECONDS, "2.5")
    assert log_interval() == 2.5
    for bad in ("-1", "soon", "inf", "nan"):
        monkeypatch.setenv(ENV_SECONDS, bad)
        with pytest.raises(InputError, match=ENV_SECONDS):
            log_interval()


def test_environment_sets_the_interval(monkeypatch, caplog):
    monkeypatch.setenv(ENV_SECONDS, "0")
    caplog.set_level(logging.INFO, logger=LOG.name)
    with Progress(3, "embed", "cells", logger=LOG, tty=False) as p:
        for _ in range(3):
            p.update(1)
    assert len(_lines(caplog)) >= 3 + 1


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (42.4, "42s"), (291, "4m51s"), (7800, "2h10m"),
                                               (3 * 86_400 + 4 * 3600, "3d04h"), (float("nan"), "?")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_peak_rss_is_this_process_not_the_parent():
    """peak_rss_mb in a child is the child's own peak, not the launching process's (as ru_maxrss would be)."""
    import subprocess
    import sys

    import numpy as np

    from omicsclip.progress import peak_rss_mb

    ballast = np.ones(1024 * 1024 * 1024 // 8)  # 1 GiB held (and touched) here
    assert peak_rss_mb() > 1024
    child = subprocess.run([sys.executable, "-c", "from omicsclip.progress import peak_rss_mb; print(peak_rss_mb())"],
                           capture_output=True, text=True, check=True)
    assert ballast[-1] == 1.0
    assert 5 < float(child.stdout) < 500, child.stdout
