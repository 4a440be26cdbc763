"""``import clearml_hooks`` must not import any ML framework (nor the store's heavy libraries)."""

from __future__ import annotations

import json
import subprocess
import sys

FRAMEWORKS = ["torch", "tensorflow", "keras", "sklearn", "joblib", "xgboost", "catboost",
              "lightgbm", "fastai", "megengine", "lightning", "pytorch_lightning"]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; "
                          "print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_pulls_in_no_framework():
    loaded = _modules_after("import clearml_hooks; from clearml_hooks import Task, Model")
    assert not loaded & set(FRAMEWORKS)
    assert "alembic" not in loaded  # imported only to upgrade an older catalog


def test_task_init_pulls_in_no_framework(tmp_path):
    code = (f"from clearml_hooks import Task; Task.init(project_name='p', task_name='t', "
            f"output_uri={str(tmp_path)!r}).close()")
    for _ in range(2):  # a new store, then the same store again
        loaded = _modules_after(code)
        assert not loaded & set(FRAMEWORKS)
        assert "alembic" not in loaded


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "clearml_hooks", "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "models" in out.stdout


def test_all_sql_lives_in_the_store():
    """SQLAlchemy and Alembic are imported only under clearml_hooks/store/ (DESIGN: the store
    holds all SQL; the layers above call its functions)."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parent.parent / "clearml_hooks"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).parts[0] == "store":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            if any(n.split(".")[0] in ("sqlalchemy", "alembic") for n in names):
                offenders.append(f"{path.relative_to(package)}:{node.lineno}")
    assert offenders == []
