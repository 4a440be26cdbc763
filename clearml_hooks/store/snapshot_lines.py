"""The journal line of a one-file snapshot, encoded without ``json.dumps`` on every save.

Why: a captured save must cost the training thread as little as possible, and on a busy
machine ``json.dumps`` of a snapshot header takes 10-14 us (100 us in a training loop, where
caches are cold), as much as staging the file. Most fields of such a header are the same for
every save of one path (task, source, name, framework): their JSON is made once per path and
kept; a save only formats the fields that change (record id, iteration, time, size, mtime, the
staged path). The line decodes to exactly the header ``SnapshotLines.header`` returns
(tests/test_journal.py).
"""

from __future__ import annotations

import json
from typing import Any

MAX_CACHED = 4096  # paths whose fixed JSON is kept; a run saving more distinct paths re-encodes

_encode_str = json.encoder.encode_basestring_ascii  # what json.dumps does for a str


class SnapshotLines:
    """Headers, and their encoded journal lines, of one task's one-file snapshots."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self._task_json = _encode_str(task_id)
        # (src, name, framework) -> (the line's fixed start, the file name's JSON)
        self._fixed: dict[tuple[str, str, str], tuple[str, str]] = {}

    def header(self, rid: str, src: str, name: str, framework: str, iteration: int | None,
               ts: float, size: int, mtime_ns: int, how: str = "inline",
               staged: str | None = None, ident: list[int] | None = None,
               staging: list[str] | None = None) -> dict[str, Any]:
        """The record header, as the worker and recovery read it. ``how`` is ``inline`` (the
        payload is the file, ``size`` bytes) or how the file was staged at ``staged``."""
        return self.record(rid, src, name, framework, iteration, ts, size, mtime_ns, how,
                           staged, ident, staging)[0]

    def line(self, rid: str, src: str, name: str, framework: str, iteration: int | None,
             ts: float, size: int, mtime_ns: int, how: str = "inline",
             staged: str | None = None, ident: list[int] | None = None,
             staging: list[str] | None = None) -> bytes:
        """``header(...)`` as one JSON line."""
        return self.record(rid, src, name, framework, iteration, ts, size, mtime_ns, how,
                           staged, ident, staging)[1]

    def record(self, rid: str, src: str, name: str, framework: str, iteration: int | None,
               ts: float, size: int, mtime_ns: int, how: str = "inline",
               staged: str | None = None, ident: list[int] | None = None,
               staging: list[str] | None = None) -> tuple[dict[str, Any], bytes]:
        """(header, its JSON line), in one call for the hot path. ``rid`` is alphanumeric
        (``journal.new_id``), ``how`` one of staging's plain words, ``iteration`` an int or
        None, the sizes, times and ``ident`` ints: what ``os.stat`` gives."""
        entry: dict[str, Any] = {"size": size, "how": how, "rel": name}
        key = (src, name, framework)
        fixed = self._fixed.get(key)
        if fixed is None:
            fixed = self._fix(key)
        head, name_json = fixed
        extra = ""
        if staged is not None:
            entry["path"] = staged
            extra = f',"path":{_encode_str(staged)}'
        if ident is not None:
            entry["id"] = ident
            extra += f',"id":[{",".join(map(str, map(int, ident)))}]'
        folders = ",".join(map(_encode_str, staging)) if staging else ""
        n = size if how == "inline" else 0
        header = {"t": "snap", "rid": rid, "task": self.task_id, "src": src, "name": name,
                  "fw": framework, "kind": "file", "it": iteration, "ts": ts, "files": [entry],
                  "staging": staging or [], "src_size": size, "src_mtime_ns": mtime_ns, "n": n}
        line = (f'{head}"rid":"{rid}","it":{"null" if iteration is None else iteration},'
                f'"ts":{ts!r},"src_size":{size},"src_mtime_ns":{mtime_ns},'
                f'"n":{n},"staging":[{folders}],'
                f'"files":[{{"size":{size},"how":"{how}","rel":{name_json}{extra}}}]}}\n'
                ).encode()
        return header, line

    def _fix(self, key: tuple[str, str, str]) -> tuple[str, str]:
        src, name, framework = key
        fixed = (f'{{"t":"snap","task":{self._task_json},"src":{_encode_str(src)},'
                 f'"name":{_encode_str(name)},"fw":{json.dumps(framework)},"kind":"file",',
                 _encode_str(name))
        if len(self._fixed) >= MAX_CACHED:
            self._fixed.clear()
        self._fixed[key] = fixed
        return fixed

