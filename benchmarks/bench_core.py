"""Foundation benchmarks: save stall, per-call agent cost, import/Task.init time, peak RSS.

Run: python benchmarks/bench_core.py [--size-mb 512] [--repeats 7]
Every figure is a median over repeats; captured and agent-off runs are interleaved in one
process so that machine noise hits both sides alike.
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _python(code: str, env: dict | None = None) -> str:
    """Run a snippet in a fresh interpreter; its last stdout line. Its temporary files
    (``tempfile`` honours ``TMPDIR``: checkpoints of hundreds of MB, stores) go in a folder
    removed afterwards, whatever the snippet cleans up itself."""
    with tempfile.TemporaryDirectory(prefix="clearml-hooks-bench-") as tmpdir:
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": str(REPO),
                                             "TMPDIR": tmpdir, **(env or {})})
    if out.returncode:
        raise RuntimeError(out.stderr)
    return out.stdout.strip().splitlines()[-1]


def startup(repeats: int) -> dict:
    """Fresh interpreters: ``import clearml_hooks`` and ``Task.init`` on the embedded store."""
    imports, inits = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            result = json.loads(_python(f"""
                import time, json
                t0 = time.perf_counter()
                import clearml_hooks
                from clearml_hooks import Task
                t1 = time.perf_counter()
                Task.init(project_name="bench", task_name="init", output_uri={tmp!r} + "/s{i}")
                t2 = time.perf_counter()
                print(json.dumps([t1 - t0, t2 - t1]))
            """, env={"CLEARML_HOOKS_EXIT_TIMEOUT": "30"}))
            imports.append(result[0] * 1e3)
            inits.append(result[1] * 1e3)
    return {"import_ms": statistics.median(imports), "task_init_ms": statistics.median(inits)}


def save_stall(size_mb: int, repeats: int) -> dict:
    """torch.save of a ``size_mb`` state_dict: captured vs agent off, interleaved."""
    return json.loads(_python(f"""
        import json, os, statistics, tempfile, time
        import torch
        from clearml_hooks import Task
        from clearml_hooks.hooks.registry import registry
        tmp = tempfile.mkdtemp()
        state = {{f"layer{{i}}": torch.randn({size_mb} * 2**20 // 4 // 8) for i in range(8)}}
        task = Task.init(project_name="bench", task_name="stall", output_uri=tmp + "/store")
        reg = registry()
        sink = reg.sink  # off = the sink taken away (harness.agent_switches: no re-patching)
        path = os.path.join(tmp, "model.pt")
        on, off = [], []
        def timed():
            t = time.perf_counter(); torch.save(state, path); return time.perf_counter() - t
        timed()  # warm the page cache and the store
        task.flush(wait_for_uploads=True)
        for i in range({repeats}):
            # every sample starts alike: nothing stored in the background, no dirty pages
            for mode in (("off", "on") if i % 2 == 0 else ("on", "off")):
                reg.sink = None if mode == "off" else sink
                (off if mode == "off" else on).append(timed())
                task.flush(wait_for_uploads=True)  # training computes between saves
                os.sync()
        print(json.dumps({{"off_s": statistics.median(off), "on_s": statistics.median(on),
                          "ratio": statistics.median(on) / statistics.median(off),
                          "stats": task.capture_stats}}))
        task.close()
    """))


def per_call_cost(repeats: int) -> dict:
    """Agent time per hooked call that is filtered out, on torch.load and on a no-op target."""
    return json.loads(_python(f"""
        import io, json, os, statistics, tempfile, time
        import torch
        from clearml_hooks import Task
        from clearml_hooks.hooks.registry import registry
        tmp = tempfile.mkdtemp()
        path = os.path.join(tmp, "batch.pt")
        torch.serialization.save.__wrapped__ if hasattr(torch.save, "__wrapped__") else None
        torch.save({{"x": torch.zeros(4)}}, path)
        task = Task.init(project_name="bench", task_name="calls", output_uri=tmp + "/store",
                         auto_connect_frameworks={{"pytorch": "final*.pt"}})
        selection, sink = registry().selection, registry().sink
        N = 2000
        def run(fn):
            t = time.perf_counter()
            for _ in range(N):
                fn()
            return (time.perf_counter() - t) / N * 1e6
        load = lambda: torch.load(path)
        buf = io.BytesIO(); torch.serialization.save.__wrapped__({{}}, buf); raw = buf.getvalue()
        on, off = [], []
        for _ in range({repeats}):
            registry().uninstrument(); off.append(run(load))
            registry().instrument(selection, sink); on.append(run(load))
        # the same measurement on the hook alone: a target whose body does nothing
        from clearml_hooks.hooks.binding import Binding, Target, arg
        import types, sys
        mod = types.ModuleType("noop_target"); sys.modules["noop_target"] = mod
        exec("def save(obj, f):\\n    return None", mod.__dict__)
        class Noop(Binding):
            key = "noopfw"; framework = "Custom"; distribution = "x"
            targets = (Target("noop_target", "save", "save", arg("f", 1)),)
        registry().add_binding(Noop)
        task.close()
        task = Task.init(project_name="bench", task_name="calls2", output_uri=tmp + "/store",
                         auto_connect_frameworks={{"noopfw": "final*.pt"}})
        original = mod.save.__wrapped__
        wrapped = mod.save
        noop_on, noop_off = [], []
        for _ in range({repeats}):
            noop_off.append(run(lambda: original(None, "epoch.pt")))
            noop_on.append(run(lambda: wrapped(None, "epoch.pt")))
        print(json.dumps({{
            "torch_load_off_us": statistics.median(off),
            "torch_load_filtered_us": statistics.median(on),
            "torch_load_agent_us": statistics.median(on) - statistics.median(off),
            "noop_agent_us": statistics.median(noop_on) - statistics.median(noop_off),
        }}))
        task.close()
    """))


def journal_cost(repeats: int) -> dict:
    """Training-thread cost of one captured save beyond the framework's own write (link +
    journal), measured on the capturer directly with a small file rewritten each time."""
    return json.loads(_python(f"""
        import json, os, statistics, tempfile, time
        from clearml_hooks import Task
        from clearml_hooks.hooks.binding import Location
        tmp = tempfile.mkdtemp()
        task = Task.init(project_name="bench", task_name="journal", output_uri=tmp + "/store",
                         auto_connect_frameworks=False)
        task.wait_registered()
        capturer, path, times = task.capturer, os.path.join(tmp, "m.bin"), []
        for i in range(50 * {repeats}):
            capturer.before_save(path)
            with open(path, "wb") as f:
                f.write(b"x" * 4096)
            t = time.perf_counter()
            capturer.saved(None, Location(path), "PyTorch")
            times.append((time.perf_counter() - t) * 1e3)
        task.flush(wait_for_uploads=True)
        times.sort()
        print(json.dumps({{"median_ms": statistics.median(times),
                          "p90_ms": times[int(len(times) * 0.9)]}}))
        task.close()
    """))


def peak_rss(size_mb: int) -> dict:
    """Peak RSS added by capturing a ``size_mb`` checkpoint (bytes stream; never held whole)."""
    code = f"""
        import json, os, resource, tempfile, time
        import torch
        tmp = tempfile.mkdtemp()
        capture = os.environ["MODE"] == "on"
        if capture:
            from clearml_hooks import Task
            task = Task.init(project_name="bench", task_name="rss", output_uri=tmp + "/store")
            task.wait_registered()
        state = {{"w": torch.randn({size_mb} * 2**20 // 4)}}
        path = os.path.join(tmp, "big.pt")
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        torch.save(state, path)
        if capture:
            task.flush(wait_for_uploads=True)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps([base / 1024, peak / 1024]))
    """
    off = json.loads(_python(code, env={"MODE": "off"}))
    on = json.loads(_python(code, env={"MODE": "on"}))
    return {"off_base_mb": off[0], "off_peak_mb": off[1], "on_base_mb": on[0],
            "on_peak_mb": on[1], "added_by_capture_mb": (on[1] - on[0]) - (off[1] - off[0])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--rss-size-mb", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", choices=["startup", "stall", "calls", "journal", "rss"])
    args = parser.parse_args()
    results = {}
    if args.only in (None, "startup"):
        results["startup"] = startup(max(args.repeats, 11))
        print("startup", results["startup"], flush=True)
    if args.only in (None, "calls"):
        results["calls"] = per_call_cost(args.repeats)
        print("calls", results["calls"], flush=True)
    if args.only in (None, "journal"):
        results["journal"] = journal_cost(args.repeats)
        print("journal", results["journal"], flush=True)
    if args.only in (None, "stall"):
        results["stall"] = save_stall(args.size_mb, args.repeats)
        print("stall", results["stall"], flush=True)
    if args.only in (None, "rss"):
        results["rss"] = peak_rss(args.rss_size_mb)
        print("rss", results["rss"], flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
