"""The capture contract's costs as a user meets them (issue 7), side by side in one run.

Run: python benchmarks/bench_capture.py [--only small|exit|lateness|breakdown|pending]
[--repeats 7]

- small: training-thread cost of a captured small ``torch.save`` over the same save filtered
  out, at rest and while the background worker stores a large snapshot; how much a
  filtered-out save slows down while the worker stores (vs. the agent off); and the floor:
  a plain save plus only the bare system calls an exact, durable snapshot needs (open, fstat,
  pread, close, one append), no agent, over the plain save; and the same for a hard link
  instead (link, lstat, one append: the fewest system calls of any exact way without reflinks).
- exit: process wall time of ``Task.init`` + exit with nothing saved, over the same script
  without it (fresh interpreters, interleaved, medians).
- breakdown: training-thread CPU time of the pieces of a captured small save, one by one.
- pending: a filtered-out save while a hard-linked snapshot is pending, and with nothing
  pending, over the agent off (what protecting pending links costs every hooked save).
- lateness: p99 lateness of a 1 ms timer loop in the main thread while a 1 GiB snapshot is
  stored in the background, vs. the same loop with nothing stored.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import _python  # noqa: E402  (one runner of snippets for the benchmarks)


def small_save(repeats: int) -> dict:
    """Paired samples: each captured save is timed right after a filtered-out one, so load
    drift cancels; the median of the per-pair differences is the agent's training-thread cost.
    ``busy``: the same while the worker stores a 256 MB snapshot."""
    return json.loads(_python(f"""
        import json, os, shutil, statistics, tempfile, time
        import torch
        from clearml_hooks import Task
        from clearml_hooks.hooks.registry import registry
        tmp = tempfile.mkdtemp()
        try:
            state = {{"w": torch.randn(256)}}  # a ~2 KB checkpoint
            big = {{"w": torch.randn(64 * 2**20)}}  # 256 MB: keeps the worker busy
            task = Task.init(project_name="bench", task_name="small", output_uri=tmp + "/store",
                             auto_connect_frameworks={{"pytorch": "final*.pt"}})
            selection, sink = registry().selection, registry().sink
            filtered, captured = os.path.join(tmp, "epoch.pt"), os.path.join(tmp, "final.pt")
            def timed(path):
                t = time.perf_counter(); torch.save(state, path); return time.perf_counter() - t
            def pairs(a, b, n, stop=None):
                diffs, firsts = [], []
                for _ in range(n):
                    if stop is not None and stop():
                        break
                    x = a(); y = b()
                    diffs.append((y - x) * 1e6); firsts.append(x * 1e6)
                return diffs, firsts
            for _ in range(50):
                timed(filtered); timed(captured)
            task.flush(wait_for_uploads=True)
            rest, busy, slow, base, floor, link_floor = [], [], [], [], [], []
            journal_fd = os.open(os.path.join(tmp, "floor.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            header = b'{{"t":"snap","rid":"0123456789abcdef0123456789abcdef","src":"final.pt"}}\\n'
            def bare(path):
                # the floor: a save plus only the system calls an exact, durable snapshot of a
                # small file needs before the call returns (read it, append a record), no agent
                t = time.perf_counter(); torch.save(state, path)
                fd = os.open(path, os.O_RDONLY); st = os.fstat(fd)
                data = os.pread(fd, st.st_size + 1, 0); os.close(fd)
                os.write(journal_fd, header + data)
                return time.perf_counter() - t
            links = iter(range(10**9))
            def bare_link(path):
                # the floor of the cheapest exact way there is without reflinks: a hard link of
                # the file, a stat of it (its identity) and the append; the worker removes the
                # link later (here: outside the timed region)
                staged = os.path.join(tmp, f"staged-{{next(links)}}")
                t = time.perf_counter(); torch.save(state, path)
                os.link(path, staged); os.lstat(staged)
                os.write(journal_fd, header)
                took = time.perf_counter() - t
                os.unlink(staged)
                return took
            for r in range({repeats}):
                d, _ = pairs(lambda: timed(filtered), lambda: timed(captured), 300)
                rest.append(statistics.median(d))
                task.flush(wait_for_uploads=True)
                torch.save(big, os.path.join(tmp, "final_big.pt"))  # the worker stores it now
                worker = task.store.worker
                d, _ = pairs(lambda: timed(filtered), lambda: timed(captured), 300,
                             stop=lambda: worker.outstanding() == 0)
                if d:
                    busy.append(statistics.median(d))
                task.flush(wait_for_uploads=True)
                # filtered-out saves, agent off vs agent on while the worker stores
                off = []
                registry().uninstrument()
                for _ in range(300):
                    off.append(timed(filtered) * 1e6)
                d, _ = pairs(lambda: timed(filtered), lambda: bare(captured), 300)
                floor.append(statistics.median(d))
                d, _ = pairs(lambda: timed(filtered), lambda: bare_link(captured), 300)
                link_floor.append(statistics.median(d))
                registry().instrument(selection, sink)
                torch.save(big, os.path.join(tmp, "final_big.pt"))
                on = []
                while worker.outstanding() and len(on) < 300:
                    on.append(timed(filtered) * 1e6)
                if on:
                    slow.append(statistics.median(on) / statistics.median(off))
                    base.append(statistics.median(off))
                task.flush(wait_for_uploads=True)
            os.close(journal_fd)
            print(json.dumps({{
                "captured_minus_filtered_us_at_rest": statistics.median(rest),
                "captured_minus_filtered_us_worker_busy": statistics.median(busy) if busy else None,
                "bare_syscalls_floor_us": statistics.median(floor),
                "bare_link_floor_us": statistics.median(link_floor),
                "filtered_save_us_agent_off": statistics.median(base) if base else None,
                "filtered_slowdown_while_worker_stores": statistics.median(slow) if slow else None,
                "stats": task.capture_stats}}))
            task.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    """))


def exit_cost(repeats: int) -> dict:
    """Fresh interpreters: a script with Task.init (nothing saved) vs the same without. Both
    read compiled bytecode, as an installed package does (a private pycache, removed after)."""
    package = REPO / "clearml_hooks"
    had_pycache = {p.parent for p in package.rglob("__pycache__/*.pyc")}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], env=env, check=True)
    try:
        return _exit_cost(repeats)
    finally:  # remove the bytecode this benchmark wrote
        import shutil

        for folder in package.rglob("__pycache__"):
            if folder not in had_pycache:
                shutil.rmtree(folder, ignore_errors=True)


def _exit_cost(repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        plain = "import sys\n"
        with_task = textwrap.dedent(f"""
            from clearml_hooks import Task
            Task.init(project_name="bench", task_name="exit", output_uri={tmp!r} + "/store")
        """)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        samples: dict[str, list[float]] = {"plain": [], "task": []}
        for i in range(repeats):
            for name, code in (("plain", plain), ("task", with_task))[:: 1 if i % 2 else -1]:
                t = time.perf_counter()
                subprocess.run([sys.executable, "-c", code], env=env, check=True)
                samples[name].append((time.perf_counter() - t) * 1e3)
    plain_ms, task_ms = statistics.median(samples["plain"]), statistics.median(samples["task"])
    return {"plain_ms": plain_ms, "task_ms": task_ms, "added_ms": task_ms - plain_ms}


def lateness(size_mb: int, repeats: int) -> dict:
    return json.loads(_python(f"""
        import json, os, shutil, statistics, tempfile, time
        from clearml_hooks import Task
        from clearml_hooks.hooks.binding import Location
        tmp = tempfile.mkdtemp()
        try:
            path = os.path.join(tmp, "big.bin")
            with open(path, "wb") as f:
                for _ in range({size_mb}):
                    f.write(os.urandom(1 << 20))
            task = Task.init(project_name="bench", task_name="late", output_uri=tmp + "/store",
                             auto_connect_frameworks=False)
            def loop(seconds):
                late, end = [], time.perf_counter() + seconds
                while time.perf_counter() < end:
                    t = time.perf_counter(); time.sleep(0.001)
                    late.append((time.perf_counter() - t - 0.001) * 1e3)
                late.sort()
                return late[int(len(late) * 0.99)]
            quiet, busy, store_s = [], [], []
            for r in range({repeats}):
                quiet.append(loop(1.0))
                t = time.perf_counter()
                task.capturer.saved(None, Location(path), "PyTorch")
                samples = []
                while task.store.worker.outstanding():
                    samples.append(loop(0.25))
                store_s.append(time.perf_counter() - t)
                busy.append(max(samples) if samples else 0.0)
            print(json.dumps({{"quiet_p99_ms": statistics.median(quiet),
                              "busy_p99_ms": statistics.median(busy),
                              "store_s": statistics.median(store_s)}}))
            task.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    """))


def pending(repeats: int) -> dict:
    """A filtered-out save while a hard-linked snapshot is pending (offline: until ``sync``; live:
    while the worker stores it), over the same save with nothing pending and with the agent
    off: what protecting pending links (``Capturer.before_save``) costs every hooked save."""
    return json.loads(_python(f"""
        import json, os, shutil, statistics, tempfile, time
        import torch
        from clearml_hooks import Task
        from clearml_hooks.hooks.registry import registry
        from clearml_hooks.store.pending_links import PENDING
        tmp = tempfile.mkdtemp()
        try:
            os.environ["CLEARML_HOOKS_OFFLINE"] = "1"  # the link stays pending
            task = Task.init(project_name="bench", task_name="pending", output_uri=tmp + "/store",
                             auto_connect_frameworks={{"pytorch": "final*.pt"}})
            reg = registry()
            sink = reg.sink
            state, filtered = {{"w": torch.randn(256)}}, os.path.join(tmp, "epoch.pt")
            final = os.path.join(tmp, "final.pt")
            def timed():
                t = time.perf_counter(); torch.save(state, filtered)
                return (time.perf_counter() - t) * 1e6
            for _ in range(200):
                timed()
            def paired(n=1000):  # agent off, then on, alternating: drift cancels
                diffs = []
                for _ in range(n):
                    reg.sink = None; off = timed()
                    reg.sink = sink; diffs.append(timed() - off)
                return statistics.median(diffs)
            linked, none = [], []
            for _ in range({repeats}):
                torch.save({{"w": torch.randn(1 << 18)}}, final)  # 1 MB: a pending hard link
                assert PENDING.paths
                linked.append(paired())
                PENDING.take_under(tmp)  # forget it (a test of cost, not of capture)
                none.append(paired())
            print(json.dumps({{"filtered_over_off_us_link_pending": statistics.median(linked),
                              "filtered_over_off_us_nothing_pending": statistics.median(none),
                              "stats": task.capture_stats}}))
            task.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    """))


def breakdown(calls: int = 3000) -> dict:
    """Training-thread CPU time (``time.thread_time_ns``, medians) of the pieces of a captured
    small save, each called on its own: where the small save's cost goes."""
    return json.loads(_python(f"""
        import json, os, shutil, statistics, tempfile, time
        import torch
        from clearml_hooks import Task
        from clearml_hooks.hooks import process
        from clearml_hooks.hooks.binding import Location
        from clearml_hooks.store import staging
        from clearml_hooks.store.journal import new_id
        tmp = tempfile.mkdtemp()
        try:
            task = Task.init(project_name="bench", task_name="parts", output_uri=tmp + "/store",
                             auto_connect_frameworks={{"pytorch": "final*.pt"}})
            path = os.path.join(tmp, "final.pt")
            torch.save({{"w": torch.randn(256)}}, path)
            def cpu_us(fn):
                samples = []
                for _ in range({calls}):
                    t = time.thread_time_ns(); fn(); samples.append(time.thread_time_ns() - t)
                return statistics.median(samples) / 1e3
            location, capturer, journal = Location(path), task.capturer, task.store.journal
            header = {{"t": "bench", "rid": "a" * 32, "src": path, "files": []}}
            out = {{
                "capturer_saved_us": cpu_us(lambda: capturer.saved(None, location, "PyTorch")),
                "stage_file_inline_us": cpu_us(lambda: staging.stage_file(
                    path, None, inline_max=65536, force_copy=False, min_free=0)),
                "journal_line_us": cpu_us(lambda: capturer._lines.line(
                    "a" * 32, path, "final.pt", "PyTorch", None, time.time(), 1500, 1)),
                "journal_append_1500_bytes_us": cpu_us(lambda: journal.append(header,
                                                                              b"x" * 1500)),
                "new_id_us": cpu_us(new_id),
                "capture_allowed_us": cpu_us(process.capture_allowed),
            }}
            task.close()
            print(json.dumps(out))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    """, env={"CLEARML_HOOKS_EXIT_TIMEOUT": "0"}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--only", choices=["small", "exit", "lateness", "breakdown", "pending"])
    args = parser.parse_args()
    results = {}
    if args.only in (None, "small"):
        results["small"] = small_save(args.repeats)
        print("small", results["small"], flush=True)
    if args.only in (None, "exit"):
        results["exit"] = exit_cost(max(args.repeats, 11))
        print("exit", results["exit"], flush=True)
    if args.only in (None, "lateness"):
        results["lateness"] = lateness(args.size_mb, max(3, args.repeats // 2))
        print("lateness", results["lateness"], flush=True)
    if args.only in (None, "pending"):
        results["pending"] = pending(args.repeats)
        print("pending", results["pending"], flush=True)
    if args.only in (None, "breakdown"):
        results["breakdown"] = breakdown()
        print("breakdown", results["breakdown"], flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
