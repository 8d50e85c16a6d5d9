"""Code-jail benchmark: start-to-verdict time of a trivial program, and HumanEval checking throughput.

Every variant is measured side by side in interleaved rounds (the machine is shared, so only ratios in
one run mean anything):
- plain: `subprocess.run` of the same interpreter and flags, no limits, no isolation;
- jail: `run_code` with the best isolation here (bwrap), and with the forced fallback (rlimits+netns).
HumanEval: the 164 canonical solutions checked with 1 and with `--workers` parallel jails, and the same
programs with plain `subprocess.run` in the same number of threads.

    .venv/bin/python bench/jail.py --rounds 30 --workers 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from strop.sandbox.jail import isolation_level, run_code
from strop.sandbox.jail_isolation import base_python
from strop.sandbox.tasks.humaneval import HumanEvalTaskSet, build_program

TRIVIAL = "print('ok')\n"


def plain_run(code: str, timeout_s: float = 10.0) -> tuple[float, bool]:
    """The baseline: the same interpreter and flags in a plain subprocess, code in a temp file."""
    exe, _ = base_python()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        Path(d, "main.py").write_text(code)
        done = subprocess.run(
            [str(exe), "-E", "-S", "-s", "-B", "main.py"],
            cwd=d,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    return time.perf_counter() - start, done.returncode == 0


def jail_run(code: str, isolation: str) -> tuple[float, bool]:
    start = time.perf_counter()
    result = run_code(code, isolation=isolation)  # type: ignore[arg-type]
    return time.perf_counter() - start, result.ok


def trivial(rounds: int) -> dict[str, object]:
    variants = {
        "plain": lambda: plain_run(TRIVIAL),
        "jail-auto": lambda: jail_run(TRIVIAL, "auto"),
        "jail-rlimits": lambda: jail_run(TRIVIAL, "rlimits"),
    }
    for fn in variants.values():  # warm caches and the isolation probes
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            elapsed, ok = fn()
            if not ok:
                raise RuntimeError(f"{name} failed on the trivial program")
            times[name].append(elapsed)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "rounds": rounds,
        "isolation_auto": str(isolation_level("auto")),
        "isolation_fallback": str(isolation_level("rlimits")),
        "median_ms": {k: round(v * 1000, 1) for k, v in med.items()},
        "overhead_ms": {k: round((med[k] - med["plain"]) * 1000, 1) for k in ("jail-auto", "jail-rlimits")},
        "ratio_to_plain": {k: round(med[k] / med["plain"], 2) for k in ("jail-auto", "jail-rlimits")},
    }


def humaneval(workers: int) -> dict[str, object]:
    ts = HumanEvalTaskSet(workers=workers)
    tasks = ts.all_tasks()
    programs = [build_program(t, t.answer) for t in tasks]
    out: dict[str, object] = {"problems": len(tasks)}
    for n in sorted({1, workers}):
        for name in ("plain", "jail"):
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=n) as pool:
                if name == "plain":
                    oks = [ok for _, ok in pool.map(plain_run, programs)]
                else:
                    oks = [
                        v.correct
                        for v in pool.map(
                            HumanEvalTaskSet(workers=n).verify, tasks, [t.answer for t in tasks]
                        )
                    ]
            elapsed = time.perf_counter() - start
            out[f"{name}_workers{n}"] = {
                "seconds": round(elapsed, 2),
                "per_s": round(len(tasks) / elapsed, 1),
                "passed": sum(oks),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30, help="Interleaved rounds of the trivial program.")
    parser.add_argument("--workers", type=int, default=2, help="Parallel jails for HumanEval.")
    parser.add_argument("--skip-humaneval", action="store_true", help="Only the trivial-program latency.")
    args = parser.parse_args()
    report: dict[str, object] = {"python": sys.version.split()[0], "trivial": trivial(args.rounds)}
    if not args.skip_humaneval:
        report["humaneval"] = humaneval(args.workers)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
