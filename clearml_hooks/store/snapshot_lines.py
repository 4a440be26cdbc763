"""The journal line of a small one-file snapshot, encoded without ``json.dumps`` on every save.

Why: a captured small save must cost the training thread as little as possible, and on a busy
machine ``json.dumps`` of a snapshot header takes 10-14 us, as much as reading the file and
appending the record together. Most fields of such a header are the same for every save of one
path (task, source, name, framework): their JSON is made once per path and kept; a save only
formats the fields that change (record id, iteration, time, size, mtime). The line decodes to
exactly the header ``InlineLines.header`` returns (tests/test_journal.py).
"""

from __future__ import annotations

import json
from typing import Any

MAX_CACHED = 4096  # paths whose fixed JSON is kept; a run saving more distinct paths re-encodes


class InlineLines:
    """Headers, and their encoded journal lines, of one task's one-file inline snapshots."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self._task_json = json.dumps(task_id)
        self._fixed: dict[tuple[str, str, str], str] = {}

    def header(self, rid: str, src: str, name: str, framework: str, iteration: int | None,
               ts: float, size: int, mtime_ns: int) -> dict[str, Any]:
        """The record header, as the worker and recovery read it."""
        return {"t": "snap", "rid": rid, "task": self.task_id, "src": src, "name": name,
                "fw": framework, "kind": "file", "it": iteration, "ts": ts,
                "files": [{"size": size, "how": "inline", "rel": name}], "staging": [],
                "src_size": size, "src_mtime_ns": mtime_ns, "n": size}

    def line(self, rid: str, src: str, name: str, framework: str, iteration: int | None,
             ts: float, size: int, mtime_ns: int) -> bytes:
        """``header(...)`` as one JSON line. ``rid`` is alphanumeric (``journal.new_id``),
        ``iteration`` an int or None, ``size`` and ``mtime_ns`` ints: what ``os.stat`` gives."""
        key = (src, name, framework)
        fixed = self._fixed.get(key)
        if fixed is None:
            fixed = self._fix(key)
        return (f'{fixed}"rid":"{rid}","it":{"null" if iteration is None else iteration},'
                f'"ts":{ts!r},"src_size":{size},"src_mtime_ns":{mtime_ns},"n":{size},'
                f'"files":[{{"size":{size},"how":"inline","rel":{fixed.name_json}}}]}}\n'
                ).encode()

    def _fix(self, key: tuple[str, str, str]) -> _Fixed:
        src, name, framework = key
        fixed = _Fixed(f'{{"t":"snap","task":{self._task_json},"src":{json.dumps(src)},'
                       f'"name":{json.dumps(name)},"fw":{json.dumps(framework)},"kind":"file",'
                       f'"staging":[],')
        fixed.name_json = json.dumps(name)
        if len(self._fixed) >= MAX_CACHED:
            self._fixed.clear()
        self._fixed[key] = fixed
        return fixed


class _Fixed(str):
    """The fixed start of a line, carrying its file name's JSON too."""

    name_json: str
