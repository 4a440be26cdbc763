"""What ``clearml-hooks run`` adds to a program's start and end, over a plain interpreter.

Fresh processes, interleaved (plain, run, plain, run, ... with the order alternating), medians:

- start: from launching the command to the first line of the program running (the program
  prints ``time.time()`` first thing);
- end to end: ``python -c pass`` from launch to exit (start, plus the task's close);
- CPU: user + system time of the whole process tree (``run``, the command), which load on a
  shared machine inflates much less than wall times;
- with ``--torch``: ``python -c "import torch"``, where the program joins the task (on its
  first framework import) and the hooks patch torch.

Bytecode caches are used as on an installed package: when the environment says
PYTHONDONTWRITEBYTECODE, caches go to a temporary PYTHONPYCACHEPREFIX (warmed up first), so
every import does not compile from source. The store is a temporary folder.

    python benchmarks/bench_run.py [--repeats 21] [--torch]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIRST_LINE = "import time; print(time.time(), flush=True)"


def _run_prefix() -> list[str]:
    """``python -m clearml_hooks``: the console script's entry point (``launch.entry``),
    whatever an older install of the script says."""
    return [sys.executable, "-m", "clearml_hooks"]


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(seconds to the program's first line, seconds to exit, CPU seconds of the process tree:
    the figure that a busy machine inflates least)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    end = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = out.stdout.split()
    return (float(lines[0]) - t0 if lines else float("nan")), end, cpu


def _ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1e3, 1)


def measure(repeats: int, torch: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_HOOKS_")}
        env["CLEARML_HOOKS_HOME"] = os.path.join(tmp, "store")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        if env.pop("PYTHONDONTWRITEBYTECODE", None):
            env["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
        python, run = [sys.executable], [*_run_prefix(), "run", "--", sys.executable]
        programs = {"start": ["-c", FIRST_LINE]}
        if torch:
            programs["torch"] = ["-c", FIRST_LINE + "; import torch"]
        results: dict[str, dict] = {}
        for name, program in programs.items():
            for _ in range(2):  # warm up: bytecode caches, page cache
                _timed(python + program, env)
                _timed(run + program, env)
            samples: dict[str, list[tuple[float, float, float]]] = {"plain": [], "run": []}
            for i in range(repeats):
                order = [("plain", python), ("run", run)]
                for mode, prefix in order if i % 2 == 0 else reversed(order):
                    samples[mode].append(_timed(prefix + program, env))
            plain_first, plain_end, plain_cpu = zip(*samples["plain"], strict=True)
            run_first, run_end, run_cpu = zip(*samples["run"], strict=True)
            results[name] = {
                "plain_first_line_ms": _ms(list(plain_first)),
                "run_first_line_ms": _ms(list(run_first)),
                "added_first_line_ms": _ms([r - p for r, p in zip(run_first, plain_first, strict=True)]),
                "plain_exit_ms": _ms(list(plain_end)),
                "run_exit_ms": _ms(list(run_end)),
                "added_exit_ms": _ms([r - p for r, p in zip(run_end, plain_end, strict=True)]),
                "plain_cpu_ms": _ms(list(plain_cpu)),
                "run_cpu_ms": _ms(list(run_cpu)),
            }
            print(name, results[name], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--torch", action="store_true", help="also measure a program importing torch")
    args = parser.parse_args()
    results = measure(args.repeats, args.torch)
    results["load_average"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
