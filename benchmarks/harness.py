"""What the per-framework benchmarks (``bench_<framework>.py``) share: timing, interleaving, output.

A framework's script supplies only its ``setup(tmp) -> dict`` (the model, its save and load calls,
see :func:`main`) and calls ``harness.main(KEY, setup)``; this module measures:

- save stall: median wall time of the framework's save with the agent capturing vs agent off,
  interleaved in one process (:func:`interleaved`); the store finishes each snapshot between
  saves, as training computes between checkpoints (:func:`save_stall`).
- load cost: the agent's own time per load call, once captured (no filter; a repeated load of an
  unchanged file) and once filtered out by a wildcard. Measured by running the installed hook
  around a no-op in place of the framework (:func:`hook_cost`: a real load's jitter hides
  microseconds); the wall time of real loads, agent on vs off, is printed beside it
  (:func:`load_cost`).

Scripts import it as a top-level module (``import harness``) with the benchmarks folder on
``sys.path``; importing it puts the repository root there too, so that ``clearml_hooks`` is the
checkout's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def per_call_us(fn: Callable[..., object], calls: int, *args) -> float:
    """Mean microseconds per call of ``fn(*args)`` over ``calls`` calls in a row."""
    t = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    return (time.perf_counter() - t) / calls * 1e6


def interleaved(modes: dict[str, Callable[[], object]], measure: Callable[[], float],
                repeats: int, after: Callable[[], object] | None = None) -> dict[str, list[float]]:
    """``repeats`` rounds of: for each mode, switch to it, take one ``measure()``, then
    ``after()`` and ``os.sync()`` outside the measurement, so that every sample starts from the
    same state (no background copy running, no dirty pages of the previous write being flushed
    by the kernel). The mode order alternates between rounds, so neither mode always goes first.
    Mode name -> its samples."""
    samples: dict[str, list[float]] = {mode: [] for mode in modes}
    order = list(modes.items())
    for round_ in range(repeats):
        for mode, switch in order if round_ % 2 == 0 else reversed(order):
            switch()
            samples[mode].append(measure())
            if after is not None:
                after()
            os.sync()
    return samples


def noop(*a, **k):
    return None


def agent_switches() -> dict[str, Callable[[], object]]:
    """Agent off / on again, by taking the sink away: every hook then calls straight through.

    Not uninstrument/instrument per sample: putting the originals back on the framework's
    classes and patching them again invalidates the interpreter's caches for those classes,
    and the next call pays for it (0.3-0.5 ms per CatBoost save here), a cost no training run
    has: its hooks are set once. With the sink gone the only agent code left in an "off" call
    is the wrapper's pass-through, about a microsecond."""
    from clearml_hooks.hooks.registry import registry

    reg = registry()
    sink = reg.sink

    def off() -> None:
        reg.sink = None

    def on() -> None:
        reg.sink = sink

    return {"off": off, "on": on}


def save_stall(task, save: Callable[[], object], repeats: int) -> dict:
    switches = agent_switches()
    save()  # warm the page cache and the store
    task.flush(wait_for_uploads=True)
    s = interleaved(switches, lambda: timed(save), repeats,
                    after=lambda: task.flush(wait_for_uploads=True))
    off, on = statistics.median(s["off"]), statistics.median(s["on"])
    return {"off_ms": off * 1e3, "on_ms": on * 1e3, "ratio": on / off}


def retoggle_cost(task, save: Callable[[], object], repeats: int) -> dict:
    """Why :func:`agent_switches` does not unpatch: a captured save right after
    uninstrument + instrument against one without, interleaved."""
    from clearml_hooks.hooks.registry import registry

    reg = registry()
    selection, sink = reg.selection, reg.sink

    def retoggle() -> None:
        reg.uninstrument()
        reg.instrument(selection, sink)

    s = interleaved({"on": lambda: None, "retoggled": retoggle}, lambda: timed(save), repeats,
                    after=lambda: task.flush(wait_for_uploads=True))
    on, retoggled = statistics.median(s["on"]), statistics.median(s["retoggled"])
    return {"on_ms": on * 1e3, "retoggled_ms": retoggled * 1e3,
            "added_us": (retoggled - on) * 1e6}


def hook_cost(key: str, qualname: str, args: tuple, kwargs: dict, instance=None,
              calls: int = 20000) -> float:
    """Microseconds the installed hook adds to one call, around a no-op instead of the framework."""
    from clearml_hooks.hooks.registry import registry

    hook = next(h for h in registry().hooks[key] if h.target.qualname == qualname)
    hooked = lambda: hook(noop, instance, args, kwargs)  # noqa: E731
    bare = lambda: noop(*args, **kwargs)  # noqa: E731
    hooked()
    return statistics.median(per_call_us(hooked, calls) - per_call_us(bare, calls)
                             for _ in range(5))


def load_cost(key: str, tmp: str, load: Callable[[], object], hook_call: tuple, frameworks,
              repeats: int, calls: int) -> dict:
    from clearml_hooks import Task

    task = Task.init(project_name="bench", task_name=f"{key}-load-{bool(frameworks is True)}",
                     output_uri=os.path.join(tmp, "store"), auto_connect_frameworks=frameworks)
    task.wait_registered()
    switches = agent_switches()
    agent_us = hook_cost(key, *hook_call)
    per_call = lambda: per_call_us(load, calls)  # noqa: E731
    per_call()
    s = interleaved(switches, per_call, repeats)
    task.close()
    return {"agent_us": agent_us, "wall_off_us": statistics.median(s["off"]),
            "wall_on_us": statistics.median(s["on"])}


def parse_args() -> argparse.Namespace:
    """The options every framework's script takes."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--retoggle", action="store_true",
                        help="also time a captured save right after unpatching and patching again")
    return parser.parse_args()


def main(key: str, setup: Callable[[str], dict]) -> None:
    """Run one framework's benchmark. ``key``: the binding's name in ``auto_connect_frameworks``.

    ``setup(tmp)`` builds the models under ``tmp`` and returns ``version`` (printed), ``path``
    (what ``save`` writes), ``save`` / ``load`` (no-argument calls), ``save_label`` /
    ``load_label`` (printed) and ``hook_call``: ``(qualname, args, kwargs, instance)`` of the
    load hook that :func:`hook_cost` calls around a no-op.
    """
    args = parse_args()

    from clearml_hooks import Task

    tmp = tempfile.mkdtemp()
    try:
        fw = setup(tmp)
        task = Task.init(project_name="bench", task_name=f"{key}-save",
                         output_uri=os.path.join(tmp, "store"))
        task.wait_registered()
        results = {"version": fw["version"],
                   "save": save_stall(task, fw["save"], args.repeats)}
        results["save"]["model_mb"] = os.path.getsize(fw["path"]) / 1e6
        if args.retoggle:
            results["retoggle"] = retoggle_cost(task, fw["save"], args.repeats)
        task.close()

        for mode, frameworks in (("captured", True), ("filtered", {key: "final*"})):
            results[f"load_{mode}"] = load_cost(key, tmp, fw["load"], fw["hook_call"],
                                                frameworks, args.repeats, args.calls)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the models and the store (megabytes each run)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    s = results["save"]
    print(f"{fw['version']}: {fw['save_label']} of a {s['model_mb']:.1f} MB model: "
          f"{s['off_ms']:.1f} ms off, {s['on_ms']:.1f} ms captured, stall ratio {s['ratio']:.2f}")
    if "retoggle" in results:
        r = results["retoggle"]
        print(f"captured {fw['save_label']} right after uninstrument + instrument: "
              f"{r['retoggled_ms']:.1f} ms against {r['on_ms']:.1f} ms "
              f"({r['added_us']:+.0f} us)")
    for mode in ("captured", "filtered"):
        r = results[f"load_{mode}"]
        print(f"{fw['load_label']} {mode}: agent {r['agent_us']:.1f} us per call "
              f"(real loads: {r['wall_off_us']:.0f} us off, {r['wall_on_us']:.0f} us on)")
