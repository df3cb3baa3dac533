"""Long fuzz run (issue #12): every ``@pytest.mark.fuzz`` test under the ``long`` Hypothesis profile, with counts.

Runs ``pytest -m fuzz`` in a subprocess with random seeds and ``--examples`` cases per test (tests/fuzzing.py), the
kill -9 test with ``--kill9-trials`` trials, then prints the cases tried per entry point (exit 0 / exit 2) and the
pytest outcome, writes them as JSON and exits non-zero when pytest failed.

    python bench/fuzz.py                                   # 200 cases per test, all fuzz tests
    python bench/fuzz.py --examples 100 --kill9-trials 3   # shorter
    python bench/fuzz.py --examples 50 -- tests/io/test_fuzz_readers.py -x   # extra pytest arguments after --
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=200, help="Hypothesis cases per fuzz test (default 200).")
    ap.add_argument("--kill9-trials", type=int, default=10, help="Trials of the kill -9 test (default 10).")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fuzz.json", help="JSON report.")
    ap.add_argument("--profile", default="long", choices=["long", "fast"],
                    help="Hypothesis profile (long: random seeds; fast: derandomised).")
    ap.add_argument("pytest_args", nargs="*", help="Extra pytest arguments (after --), e.g. test files or -x.")
    args = ap.parse_args(argv)
    if args.examples < 1 or args.kill9_trials < 0:
        ap.error("--examples must be >= 1 and --kill9-trials >= 0")
    return args


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() + ("+dirty" if dirty else "")


def run_pytest(args: argparse.Namespace, report: Path) -> tuple[int, str, float]:
    """Run the fuzz tests; returns (pytest exit code, its last output line, seconds)."""
    env = {**os.environ, "OMICSCLIP_FUZZ_PROFILE": args.profile, "OMICSCLIP_FUZZ_EXAMPLES": str(args.examples),
           "OMICSCLIP_KILL9_TRIALS": str(args.kill9_trials), "OMICSCLIP_FUZZ_REPORT": str(report)}
    cmd = [sys.executable, "-m", "pytest", "-m", "fuzz", "-p", "no:cacheprovider", "-q", *args.pytest_args]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = ""
    for line in proc.stdout:  # stream pytest's output and keep its summary line
        sys.stdout.write(line)
        if line.strip():
            last = line.strip()
    code = proc.wait()
    return code, last, time.perf_counter() - t0


def table(counts: dict[str, dict[str, int]]) -> str:
    """Cases per entry point: exit 0 / exit 2 for CLI cases; for kill -9 trials, output absent / complete after the kill."""
    rows = [("entry point", "cases", "exit 0 | absent", "exit 2 | complete")]
    for entry in sorted(counts):
        c = counts[entry]
        a, b = ("absent", "complete") if entry.startswith("kill9:") else ("exit0", "exit2")
        rows.append((entry, str(sum(c.values())), str(c.get(a, 0)), str(c.get(b, 0))))
    tot = {k: sum(c.get(k, 0) for c in counts.values()) for k in ("exit0", "exit2")}
    rows.append(("total CLI cases", str(tot["exit0"] + tot["exit2"]), str(tot["exit0"]), str(tot["exit2"])))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    fmt = lambda r: "  ".join(x.ljust(w[0]) if i == 0 else x.rjust(w[i]) for i, x in enumerate(r))  # noqa: E731
    return "\n".join([fmt(rows[0]), "  ".join("-" * n for n in w), *(fmt(r) for r in rows[1:])])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="omicsclip-fuzz-") as tmp:
        report = Path(tmp) / "counts.json"
        code, last, seconds = run_pytest(args, report)
        counts = json.loads(report.read_text()) if report.exists() else {}
    print()
    print(table(counts) if counts else "no fuzz cases were counted")
    print(f"pytest: exit {code} ({last}); {seconds:.0f} s; {args.examples} examples per test, "
          f"{args.kill9_trials} kill -9 trials, profile {args.profile}")
    result = {
        "counts": counts,
        "total_cases": sum(sum(c.values()) for c in counts.values()),
        "examples": args.examples,
        "kill9_trials": args.kill9_trials,
        "profile": args.profile,
        "pytest_args": args.pytest_args,
        "pytest_exit_code": code,
        "pytest_summary": last,
        "elapsed_s": round(seconds, 1),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
