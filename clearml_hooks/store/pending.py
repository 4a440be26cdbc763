"""What is waiting to be stored: snapshots in local journals and bytes held in staging
(``clearml-hooks status``). Reads files only, never the catalog, so it works offline."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from clearml_hooks.store.journal import describe


def pending_report(journal_roots: Sequence[str], staging_root: str) -> dict[str, Any]:
    """``{"pending_snapshots", "staging_bytes", "journals": [...]}``, JSON-ready."""
    rows = []
    for j in describe(journal_roots):
        snaps = [r for r in j.pending if r.header.get("t") == "snap"]
        rows.append({"owner": j.owner, "alive": j.alive, "pending_snapshots": len(snaps),
                     "pending_records": len(j.pending), "journal_bytes": j.size,
                     "snapshots": [{"id": r.rid, "source": r.header.get("src"),
                                    "error": r.header.get("error")} for r in snaps]})
    return {"pending_snapshots": sum(r["pending_snapshots"] for r in rows),
            "staging_bytes": tree_bytes(staging_root), "journals": rows}


def tree_bytes(root: str) -> int:
    """Bytes of the files under ``root`` (0 when it does not exist)."""
    total = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total
