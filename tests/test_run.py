"""``clearml-hooks run`` and task propagation, with real processes (CPU, gloo).

Each test starts real interpreters: an unchanged script under ``run``, torchrun with two ranks,
``Task.init`` + ``torch.multiprocessing.spawn``, multiprocessing spawn / forkserver / fork,
``subprocess`` children. What they captured is read back through the CLI, as a user would.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from clearml_hooks.cli import cli
from clearml_hooks.launch import env as launch_env
from clearml_hooks.launch.entry import parse_run
from clearml_hooks.launch.run import default_task_name, end_status
from tests.conftest import REPO, run_script

if importlib.util.find_spec("torch") is None:  # the children need it; this process does not
    pytest.skip("torch is not installed", allow_module_level=True)


@pytest.fixture(scope="module", autouse=True)
def _bytecode_cache():
    """The children here import torch about ten times: with PYTHONDONTWRITEBYTECODE (tox sets
    it) each would compile it from source again. They share one bytecode cache instead, in a
    folder of its own (nothing is written next to the sources), removed afterwards."""
    if not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        yield
        return
    folder = tempfile.mkdtemp(prefix="clearml-hooks-pycache-")
    _CHILD_ENV["PYTHONPYCACHEPREFIX"] = folder
    try:
        yield
    finally:
        _CHILD_ENV.clear()
        shutil.rmtree(folder, ignore_errors=True)


_CHILD_ENV: dict[str, str] = {}


def _env(store: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in launch_env.NAMES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["CLEARML_HOOKS_HOME"] = str(store)
    if _CHILD_ENV:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.update(_CHILD_ENV)
    env.update(extra)
    return env


def _run(store: Path, *args: str, cwd: Path, env: dict | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clearml_hooks", "run", *args],
                          env=env or _env(store), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _listed(store: Path, what: str) -> list[dict]:
    out = CliRunner().invoke(cli, ["--home", str(store), what, "list", "--json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def _one_task(store: Path) -> dict:
    tasks = _listed(store, "tasks")
    assert len(tasks) == 1, tasks
    return tasks[0]


def _outputs(store: Path, task_id: str) -> list[str]:
    return sorted(os.path.basename(m["source"]) for m in _listed(store, "models")
                  if m["task"] == task_id)


def _script(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the run command -----------------------------------------------------------------------------

def test_unchanged_script_and_its_python_children_join_one_task_filtered(tmp_path):
    store = tmp_path / "store"
    _script(tmp_path / "child.py", """
        import os
        from clearml_hooks import Task
        # joins the run's task (no second one), with its own filter (Task.init > environment)
        task = Task.init(project_name="its-own", task_name="its-own",
                         auto_connect_frameworks={"pytorch": "mine*.pt"})
        assert task.id == os.environ["CLEARML_HOOKS_TASK_ID"], task.id
        assert task.attached  # it reports no end status of its own: the run does
        import torch  # joining again on this first framework import changes nothing
        torch.save({"w": 2}, "final_child.pt")
        torch.save({"w": 3}, "mine_child.pt")
    """)
    script = _script(tmp_path / "train.py", """
        import subprocess, sys, torch
        torch.save({"w": torch.zeros(3)}, "final_model.pt")
        torch.save({"w": torch.ones(3)}, "scratch.pt")
        subprocess.run([sys.executable, "child.py"], check=True)
        print("trained")
    """)
    out = _run(store, "--project", "vision", "--frameworks", '{"pytorch": "final*.pt"}',
               "--", sys.executable, str(script), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "trained\n"  # the program's output, untouched
    task = _one_task(store)
    assert (task["project"], task["name"], task["status"]) == ("vision", "train", "completed")
    assert _outputs(store, task["id"]) == ["final_model.pt", "mine_child.pt"]


def test_exit_status_passes_through_and_an_existing_sitecustomize_still_runs(tmp_path):
    store = tmp_path / "store"
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    marker = tmp_path / "their-sitecustomize-ran"
    (theirs / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    env = _env(store)
    env["PYTHONPATH"] = os.pathsep.join([str(theirs), env["PYTHONPATH"]])
    out = _run(store, "--task-name", "exits", "--", sys.executable, "-c",
               "import sys; sys.exit(3)", cwd=tmp_path, env=env)
    assert out.returncode == 3, out.stderr
    assert marker.exists()
    assert (_one_task(store)["name"], _one_task(store)["status"]) == ("exits", "failed")


def test_python_dash_m_package_that_calls_task_init_and_spawns_dataloader_workers(tmp_path):
    """``python -m pkg``: its own ``Task.init`` attaches to the run's task; its DataLoader
    workers, started with spawn (fresh interpreters that join the task), capture nothing;
    its stdout and stderr are exactly its own. ``--output-uri`` (relative, made absolute for
    the command, which changes folder before it joins) picks the store."""
    store = tmp_path / "uri-store"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    _script(tmp_path / "pkg" / "data.py", """
        import torch
        from torch.utils.data import Dataset

        class Saving(Dataset):  # a worker that saves: a copy of the training process
            def __len__(self):
                return 2

            def __getitem__(self, i):
                torch.save({"i": i}, f"worker{i}.pt")
                return i
    """)
    _script(tmp_path / "pkg" / "__main__.py", """
        import os, sys
        from clearml_hooks import Task

        if __name__ == "__main__":
            os.mkdir("work")
            os.chdir("work")
            task = Task.init(project_name="its-own", task_name="its-own")
            assert task.attached and task.id == os.environ["CLEARML_HOOKS_TASK_ID"], task.id
            import torch
            from torch.utils.data import DataLoader
            from pkg.data import Saving

            assert list(DataLoader(Saving(), num_workers=2, multiprocessing_context="spawn",
                                   batch_size=None)) == [0, 1]
            torch.save({"w": 1}, "model.pt")
            print("out")
            print("err", file=sys.stderr)
    """)
    home = tmp_path / "home-store"  # CLEARML_HOOKS_HOME: --output-uri wins over it
    out = _run(home, "--project", "run-project", "--output-uri", "uri-store", "--",
               sys.executable, "-m", "pkg", cwd=tmp_path)
    assert (out.returncode, out.stdout, out.stderr) == (0, "out\n", "err\n"), out.stderr
    work = tmp_path / "work"
    assert (work / "worker0.pt").exists() and (work / "worker1.pt").exists()
    assert not home.exists() and not (work / "uri-store").exists()
    task = _one_task(store)
    assert (task["project"], task["name"], task["status"]) == ("run-project", "pkg", "completed")
    assert _outputs(store, task["id"]) == ["model.pt"]


def test_accelerate_launch_two_cpu_processes_one_task_rank_zero_only(tmp_path):
    if importlib.util.find_spec("accelerate") is None:
        pytest.skip("accelerate is not installed")
    store = tmp_path / "store"
    script = _script(tmp_path / "acc.py", """
        import torch
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True)
        assert accelerator.num_processes == 2, accelerator.num_processes
        torch.save({"rank": accelerator.process_index}, f"acc{accelerator.process_index}.pt")
        accelerator.wait_for_everyone()
    """)
    # on CPU, `--multi_gpu` is what starts several processes (torchrun's; the script asks for
    # the CPU, gloo); `--cpu` alone runs one
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    launcher = [accelerate, "launch"] if accelerate else [sys.executable, "-m",
                                                          "accelerate.commands.launch"]
    out = _run(store, "--", *launcher, "--multi_gpu", "--num_processes", "2", "--num_machines",
               "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(_free_port()), str(script), cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "acc0.pt").exists() and (tmp_path / "acc1.pt").exists()
    task = _one_task(store)
    assert (task["name"], task["status"]) == ("acc", "completed")
    assert _outputs(store, task["id"]) == ["acc0.pt"]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a shell's background job inherits it ignored


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signals_pass_through_to_the_command_and_back(tmp_path, signum):
    # SIGINT: Python's KeyboardInterrupt, then it kills itself with SIGINT; stdin is not a
    # terminal here, so run forwards it (a terminal's Ctrl-C reaches the command directly)
    store = tmp_path / "store"
    child = "import os, time; print(os.getpid(), flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-m", "clearml_hooks", "run", "--task-name", "term",
                             "--", sys.executable, "-c", child], env=_env(store), cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    try:
        child_pid = int(proc.stdout.readline())
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == -signum, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)  # the command got it too, and was reaped
    assert _one_task(store)["status"] == "stopped"


def test_torchrun_two_ranks_one_task_rank_zero_only(tmp_path):
    store = tmp_path / "store"
    script = _script(tmp_path / "ddp.py", """
        import torch, torch.distributed as dist
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        torch.save({"rank": rank}, f"rank{rank}.pt")  # every rank saves
        dist.barrier()
        dist.destroy_process_group()
    """)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    launcher = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    out = _run(store, "--", *launcher, "--standalone", "--nproc_per_node=2", str(script),
               cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "rank0.pt").exists() and (tmp_path / "rank1.pt").exists()
    task = _one_task(store)
    assert task["name"] == "ddp"
    assert _outputs(store, task["id"]) == ["rank0.pt"]


# -- Task.init in the parent: spawned children join its task ---------------------------------------

def test_task_init_then_torch_multiprocessing_spawn_captures_rank_zero(tmp_path):
    store = tmp_path / "store"
    script = _script(tmp_path / "spawned.py", f"""
        import os, torch, torch.distributed as dist, torch.multiprocessing as mp
        from clearml_hooks import Task

        def worker(rank):
            dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{_free_port()}",
                                    rank=rank, world_size=2)
            torch.save({{"rank": rank}}, f"spawn{{rank}}.pt")
            dist.barrier()
            dist.destroy_process_group()

        if __name__ == "__main__":
            task = Task.init(project_name="p", task_name="spawn", output_uri={str(store)!r})
            mp.spawn(worker, nprocs=2)
            print(task.id)
    """)
    out = run_script(script, cwd=tmp_path, env=_env(store), timeout=300)
    assert out.returncode == 0, out.stderr
    task = _one_task(store)
    assert task["id"] == out.stdout.split()[-1] and task["status"] == "completed"
    assert _outputs(store, task["id"]) == ["spawn0.pt"]


def test_multiprocessing_spawn_and_forkserver_children_join_forked_ones_do_not(tmp_path):
    store = tmp_path / "store"
    script = _script(tmp_path / "mp.py", f"""
        import multiprocessing as mp
        import torch
        from clearml_hooks import Task

        def save(name):
            torch.save({{"name": name}}, name)

        if __name__ == "__main__":
            task = Task.init(project_name="p", task_name="mp", output_uri={str(store)!r})
            for method in ("spawn", "forkserver", "fork"):
                p = mp.get_context(method).Process(target=save, args=(method + ".pt",))
                p.start()
                p.join()
                assert p.exitcode == 0, method
            print(task.id)
    """)
    out = run_script(script, cwd=tmp_path, env=_env(store), timeout=300)
    assert out.returncode == 0, out.stderr
    task = _one_task(store)
    assert task["id"] == out.stdout.split()[-1]
    # a forked child is a copy of the training process (a worker): inert, as before
    assert _outputs(store, task["id"]) == ["forkserver.pt", "spawn.pt"]
    assert (tmp_path / "fork.pt").exists()


# -- small pieces ------------------------------------------------------------------------------------

def test_boot_sitecustomize_is_inert_without_a_task(tmp_path):
    env = _env(tmp_path / "store")
    env["PYTHONPATH"] = os.pathsep.join([launch_env.BOOT_DIR, env["PYTHONPATH"]])
    code = "import sys; print(sorted(m for m in sys.modules if m.startswith('clearml_hooks')))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_failing_sitecustomize_it_hides_fails_as_python_would_report_it(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("raise RuntimeError('theirs is broken')\n")
    env = _env(tmp_path / "store")
    env["PYTHONPATH"] = os.pathsep.join([launch_env.BOOT_DIR, str(theirs), env["PYTHONPATH"]])
    out = subprocess.run([sys.executable, "-c", "print('ran')"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert (out.returncode, out.stdout) == (0, "ran\n")
    assert "Error in sitecustomize" in out.stderr and "theirs is broken" in out.stderr


def test_bad_frameworks_json_is_a_usage_error_before_anything_runs(tmp_path):
    marker = tmp_path / "ran"
    out = _run(tmp_path / "store", "--frameworks", "{pytorch", "--", sys.executable, "-c",
               f"open({str(marker)!r}, 'w')", cwd=tmp_path)
    assert out.returncode == 2 and "frameworks must be JSON" in out.stderr
    assert not marker.exists()


def test_unknown_command_exits_127(tmp_path):
    out = _run(tmp_path / "store", "--", str(tmp_path / "no-such-program"), cwd=tmp_path)
    assert out.returncode == 127 and "command not found" in out.stderr


@pytest.mark.parametrize(("command", "name"), [
    (["python", "train.py", "--lr", "1"], "train"),
    (["torchrun", "--nproc_per_node=2", "src/ddp.py"], "ddp"),
    (["python", "-m", "pkg.train"], "pkg.train"),
    (["accelerate", "launch", "--foo"], "accelerate"),
    (["accelerate", "launch", "--num_processes", "2", "train.py", "--x"], "train"),
    (["python", "-m", "torch.distributed.run", "--nproc_per_node=2", "ddp.py"], "ddp"),
    (["python", "-m", "accelerate.commands.launch", "--cpu", "t.py"], "t"),
    (["python", "-m", "torch.distributed.run", "-m", "pkg.train"], "pkg.train"),
    (["python", "-m", "torch.distributed.run", "--help"], "torch.distributed.run"),
])
def test_default_task_name(command, name):
    assert default_task_name(command) == name


@pytest.mark.parametrize(("args", "parsed"), [
    (["--project", "p", "--", "python", "x.py"], ({"project": "p"}, ["python", "x.py"])),
    (["--task-name=n", "python", "-m", "m", "--lr", "1"],
     ({"task_name": "n"}, ["python", "-m", "m", "--lr", "1"])),
    (["--", "--odd-program"], ({}, ["--odd-program"])),
    (["--help"], None), (["--bogus", "--", "x"], None), (["--project"], None), ([], None),
])
def test_run_fast_path_parses_plain_forms_and_leaves_the_rest_to_click(args, parsed):
    assert parse_run(args) == parsed


def test_end_status():
    assert [end_status(rc) for rc in (0, 3, -signal.SIGTERM, -signal.SIGKILL)] == \
        ["completed", "failed", "stopped", "failed"]


def test_export_and_unexport_restore_the_environment(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/theirs")
    for name in launch_env.NAMES:
        monkeypatch.delenv(name, raising=False)
    launch_env.export("t1", "p", "n", "training", {"pytorch": "*.pt"}, "relative/store")
    assert os.environ["PYTHONPATH"] == os.pathsep.join([launch_env.BOOT_DIR, "/theirs"])
    assert os.environ[launch_env.OUTPUT_URI] == os.path.abspath("relative/store")
    assert launch_env.joined_task() is None  # the exporting process does not join itself
    monkeypatch.setenv(launch_env.TASK_PID, "1")  # as a child sees it
    assert launch_env.joined_task()["auto_connect_frameworks"] == {"pytorch": "*.pt"}
    assert launch_env.joined_task({"joblib": False})["auto_connect_frameworks"] == \
        {"joblib": False}  # the script's own argument wins
    launch_env.unexport("t1")
    assert os.environ["PYTHONPATH"] == "/theirs"
    assert not any(name in os.environ for name in launch_env.NAMES)


def test_the_modules_children_join_on_are_the_bindings_own():
    """``run`` reads them from the entry points without the registry (it is on the way to the
    command's start); ``Task.init`` from its registry: the same list, with every framework."""
    from clearml_hooks.hooks.registry import registry
    from clearml_hooks.launch.run import _trigger_modules

    reg = registry()
    reg.discover_entry_points()
    assert _trigger_modules() == reg.trigger_modules()
    assert {"torch", "tensorflow", "keras", "joblib", "xgboost", "catboost", "lightgbm",
            "fastai", "megengine", "lightning"} <= set(_trigger_modules())
