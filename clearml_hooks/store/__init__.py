"""The pluggable model store: a catalog (metadata) plus a blob store (bytes).

``Store`` opens both in a background thread, so ``Task.init`` does not pay for importing
SQLAlchemy or fsspec (~250 ms together); anything that needs them waits on ``ready``.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING

from clearml_hooks.config import Settings

if TYPE_CHECKING:
    from clearml_hooks.store.blobs import BlobStore
    from clearml_hooks.store.catalog import SqlCatalog

OPEN_TIMEOUT = 120.0


class StoreUnavailable(RuntimeError):
    """The catalog or blob store could not be opened; the message says which and why."""


class Store:
    def __init__(self, settings: Settings, *, background: bool = True) -> None:
        self.settings = settings
        self.home = settings.home
        self.staging_root = os.path.join(settings.home, "staging")
        self._catalog: SqlCatalog | None = None
        self._blobs: BlobStore | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._after_open: list = []
        if background:
            threading.Thread(target=self._open, name="clearml-hooks-open", daemon=True).start()
        else:
            self._open()

    def _open(self) -> None:
        try:
            from clearml_hooks.store.blobs import open_blob_store
            from clearml_hooks.store.catalog import SqlCatalog

            os.makedirs(self.staging_root, exist_ok=True)
            self._catalog = SqlCatalog(self.settings.catalog_url)
            self._blobs = open_blob_store(self.settings.blob_url)
        except BaseException as exc:  # surfaced to whoever waits on the store
            self._error = exc
        finally:
            self._ready.set()

    def wait(self, timeout: float | None = OPEN_TIMEOUT) -> None:
        if not self._ready.wait(timeout):
            raise StoreUnavailable(f"the model store at {self.home} did not open in {timeout} s")
        if self._error is not None:
            raise StoreUnavailable(
                f"cannot open the model store (catalog {self.settings.catalog_url}, blobs "
                f"{self.settings.blob_url}): {type(self._error).__name__}: {self._error}"
            ) from self._error

    @property
    def catalog(self) -> SqlCatalog:
        self.wait()
        assert self._catalog is not None
        return self._catalog

    @property
    def blobs(self) -> BlobStore:
        self.wait()
        assert self._blobs is not None
        return self._blobs

    @property
    def cache_dir(self) -> str:
        return os.path.join(self.home, "cache")


_stores: dict[tuple, Store] = {}
_lock = threading.Lock()


def store_for(settings: Settings, *, background: bool = True) -> Store:
    """One Store per (catalog, blobs) per process."""
    key = (settings.home, settings.catalog_url, settings.blob_url)
    with _lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = Store(settings, background=background)
        return store


def default_store() -> Store:
    """The store that the environment and config file name (for the model API and the CLI)."""
    from clearml_hooks.task import Task

    task = Task.current_task()
    if task is not None:
        return task.store
    return store_for(Settings.resolve(), background=False)


def _after_fork_in_child() -> None:
    """A forked child must not reuse the parent's database connections (SQLAlchemy's advice),
    and must open a store itself if the parent's opener thread had not finished."""
    for store in list(_stores.values()):
        if not store._ready.is_set():
            store._ready = threading.Event()
            threading.Thread(target=store._open, name="clearml-hooks-open", daemon=True).start()
            continue
        catalog = store._catalog
        if catalog is not None:
            try:
                catalog.engine.dispose(close=False)
            except Exception:
                pass


def _before_fork() -> None:
    """Make a fork safe for a child that captures (DDP ``ddp_fork`` ranks, and workers when
    configured), in this order, each bounded: let the task's registration and a store that is
    still opening finish (a fork mid-import leaves the child with half-imported modules), then
    hold the catalog lock so no thread is inside the database at the fork."""
    global _fork_acquired
    _fork_acquired = False
    task_module = sys.modules.get("clearml_hooks.task")
    task = getattr(getattr(task_module, "Task", None), "_current", None)
    if task is not None:
        task._created.wait(FORK_WAIT)
    for store in list(_stores.values()):
        store._ready.wait(FORK_WAIT)
    catalog = sys.modules.get("clearml_hooks.store.catalog")
    if catalog is not None:
        _fork_acquired = catalog.acquire_for_fork(FORK_WAIT)


def _after_fork_in_parent() -> None:
    catalog = sys.modules.get("clearml_hooks.store.catalog")
    if catalog is not None:
        catalog.release_after_fork(_fork_acquired, child=False)


def _after_fork_child() -> None:
    catalog = sys.modules.get("clearml_hooks.store.catalog")
    if catalog is not None:
        catalog.release_after_fork(_fork_acquired, child=True)
    _after_fork_in_child()


FORK_WAIT = 10.0
_fork_acquired = False

if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_child)
