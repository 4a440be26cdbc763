"""Frameworks, blob stores and catalogs come from their entry-point groups (pyproject.toml) alone,
and no binding imports another."""

from __future__ import annotations

import ast
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from clearml_hooks import plugins
from clearml_hooks.hooks.registry import registry

BINDINGS = Path(__file__).resolve().parent.parent / "clearml_hooks" / "bindings"


@pytest.mark.parametrize("group", plugins.GROUPS)
def test_the_fast_reader_agrees_with_importlib_metadata(group):
    expected = {ep.name: ep.value for ep in entry_points(group=group)}
    assert plugins.entry_points(group) == expected


def test_the_framework_keys_are_the_bindings_entry_points():
    names = set(plugins.entry_points("clearml_hooks.bindings"))
    assert set(registry().bindings) == names
    assert set(registry().framework_keys()) == names | {"scikit"}  # joblib's second key


def test_no_binding_imports_another():
    bad = []
    for path in BINDINGS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "clearml_hooks.bindings"):
                bad.append(f"{path.name}: from {node.module}")
            elif isinstance(node, ast.Import):
                bad += [f"{path.name}: import {a.name}" for a in node.names
                        if a.name.startswith("clearml_hooks.bindings")]
    assert bad == []


def test_catalogs_open_through_their_entry_point_group(tmp_path):
    from clearml_hooks.store import open_catalog
    from clearml_hooks.store.catalog import SqlCatalog

    catalog = open_catalog(f"sqlite:///{tmp_path / 'c.db'}", timeout=3)
    try:
        assert isinstance(catalog, SqlCatalog) and catalog.timeout == 3
    finally:
        catalog.close()


def test_an_unknown_catalog_scheme_lists_the_available_ones():
    from clearml_hooks.store import open_catalog

    with pytest.raises(ValueError) as info:
        open_catalog("mysql://root:secret@db/models")
    message = str(info.value)
    assert "'mysql'" in message and "postgresql, sqlite" in message
    assert "secret" not in message
