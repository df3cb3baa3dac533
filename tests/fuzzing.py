"""Shared support for the property-based (Hypothesis) fuzz tests: profiles, the CLI contract, case counts.

The contract every fuzzed entry point must keep (issue #12): exit 0 with a valid output, or exit 2 with exactly
one ``omicsclip: error:`` line and nothing left behind; never a traceback, never exit 1 on bad input, never a stray
file. Tests use :func:`invoke` (the CLI in-process through typer's CliRunner: one torch import for all cases) and
:func:`check_contract`, and mark themselves ``@pytest.mark.fuzz``.

Profiles: ``fast`` (the default: ``make test``, derandomised so CI is repeatable, OMICSCLIP_FUZZ_EXAMPLES cases per
test, 15 unless set) and ``long`` (``bench/fuzz.py``: random seeds, many cases). Each case is counted per entry
point; with OMICSCLIP_FUZZ_REPORT=path the counts are written there as JSON when the session ends.
"""

from __future__ import annotations

import atexit
import json
import os
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings
from typer.testing import CliRunner

_EXAMPLES = int(os.environ.get("OMICSCLIP_FUZZ_EXAMPLES", "15"))
_PHASES = tuple(Phase) if os.environ.get("OMICSCLIP_FUZZ_SHRINK", "1") != "0" else (
    Phase.explicit, Phase.reuse, Phase.generate)  # OMICSCLIP_FUZZ_SHRINK=0: report failures unshrunk (debugging)
_COMMON = dict(deadline=None, print_blob=True, phases=_PHASES,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                      HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile("fast", max_examples=_EXAMPLES, derandomize=True, database=None, **_COMMON)
settings.register_profile("long", max_examples=_EXAMPLES, derandomize=False, database=None, **_COMMON)
settings.load_profile(os.environ.get("OMICSCLIP_FUZZ_PROFILE", "fast"))

COUNTS: Counter[tuple[str, str]] = Counter()  # (entry point, outcome) -> cases


def _write_report() -> None:
    path = os.environ.get("OMICSCLIP_FUZZ_REPORT")
    if not path or not COUNTS:
        return
    out: dict[str, dict[str, int]] = {}
    for (entry, outcome), n in sorted(COUNTS.items()):
        out.setdefault(entry, {})[outcome] = n
    Path(path).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")


atexit.register(_write_report)


def record(entry: str, outcome: str) -> None:
    """Count one fuzzed case of ``entry`` (e.g. ``"ingest:csv"``) that ended in ``outcome`` (``exit0``/``exit2``)."""
    COUNTS[(entry, outcome)] += 1


def invoke(args: list[str]):
    """Run ``omicsclip ARGS`` in-process; returns click's Result (``exit_code``, ``stdout``, ``stderr``)."""
    from omicsclip.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def listing(folder: Path) -> set[str]:
    """Every path under ``folder`` (relative, hidden files included), to compare before and after a run."""
    folder = Path(folder)
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def check_contract(entry: str, result, folder: Path, before: set[str], outputs: list[Path] = ()) -> int:
    """Assert the fuzz contract for one CLI run and count the case; returns the exit code (0 or 2).

    Parameters
    ----------
    entry
        Name of the entry point for the case counts.
    result
        What :func:`invoke` returned.
    folder
        The folder the run could write to; on exit 2 it must hold exactly ``before``.
    before
        :func:`listing` of ``folder`` before the run.
    outputs
        Output paths; on exit 0 each must exist (the caller then validates their content).
    """
    code = result.exit_code
    err = result.stderr
    assert code in (0, 2), f"{entry}: exit {code} (must be 0 or 2)\nstderr: {err}\nexception: {result.exception!r}"
    assert "Traceback" not in err, f"{entry}: traceback on stderr:\n{err}"
    if code == 2:
        errors = [ln for ln in err.splitlines() if ln.startswith("omicsclip: error:")]
        assert len(errors) == 1, f"{entry}: refusal must be one 'omicsclip: error:' line, got:\n{err}"
        assert err.strip().splitlines()[-1] == errors[0], f"{entry}: refusal must end stderr:\n{err}"
        after = listing(folder)
        assert after == before, f"{entry}: exit 2 left files behind: {sorted(after - before)}; removed {sorted(before - after)}"
    else:
        for out in outputs:
            assert Path(out).exists(), f"{entry}: exit 0 but {out} was not written"
    record(entry, f"exit{code}")
    return code
