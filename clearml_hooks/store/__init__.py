"""The pluggable model store: a catalog (metadata) plus a blob store (bytes), fed by a journal.

``Store`` opens the catalog and the blob store on first use, never in ``Task.init``: capture only
needs the local journal (``store.journal``), and the background worker (``store.worker``) is
the first to touch SQLAlchemy, fsspec and the network. A script that saves nothing and exits
never imports them.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from clearml_hooks.config import Settings

if TYPE_CHECKING:
    from clearml_hooks.store.blobs import BlobStore
    from clearml_hooks.store.catalog import SqlCatalog
    from clearml_hooks.store.journal import Journal
    from clearml_hooks.store.worker import Worker


class StoreUnavailable(RuntimeError):
    """The catalog or blob store could not be opened; the message says which and why."""


class Store:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home
        self.staging_root = os.path.join(settings.home, "staging")
        self.journal_root = os.path.join(settings.home, "journal")
        self._catalog: SqlCatalog | None = None
        self._blobs: BlobStore | None = None
        self._open_lock = threading.RLock()
        self._journal: Journal | None = None
        self._worker: Worker | None = None
        self._device: int | None = None
        self._lock = threading.Lock()
        self._cache_dir: str | None = None

    # -- catalog and blobs: opened on first use ---------------------------------------------------

    def _open(self) -> None:
        with self._open_lock:
            if self._catalog is not None and self._blobs is not None:
                return
            try:
                from clearml_hooks.store.blobs import open_blob_store

                if self._catalog is None:
                    self._catalog = open_catalog(self.settings.catalog_url,
                                                 timeout=self.settings.catalog_timeout)
                if self._blobs is None:
                    self._blobs = open_blob_store(self.settings.blob_url)
            except Exception as exc:
                raise StoreUnavailable(
                    f"cannot open the model store (catalog {_redact(self.settings.catalog_url)}, "
                    f"blobs {self.settings.blob_url}): {type(exc).__name__}: {exc}") from exc

    def import_worker_modules(self) -> None:
        """Import what the background worker uses, under the lock a fork waits for
        (``_before_fork``): a fork while a thread is inside an import leaves that module's lock
        held in the child by a thread that does not exist there, and the child's own worker
        would hang on it."""
        with self._open_lock:
            import clearml_hooks.store.blobs
            import clearml_hooks.store.events
            import clearml_hooks.store.ingest
            import clearml_hooks.store.model_ops
            import clearml_hooks.store.processor
            import clearml_hooks.store.recovery
            import clearml_hooks.store.staging  # noqa: F401

    def open_other_blobs(self, url: str) -> BlobStore:
        """A blob store other than this store's own (``update_weights`` to another
        destination), opened under the same fork lock (it may import a filesystem)."""
        from clearml_hooks.store.blobs import open_blob_store

        with self._open_lock:
            return open_blob_store(url)

    def wait(self, timeout: float | None = None) -> None:
        """Open the store now (raises ``StoreUnavailable`` with the reason)."""
        self._open()

    @property
    def is_open(self) -> bool:
        return self._catalog is not None

    @property
    def catalog(self) -> SqlCatalog:
        if self._catalog is None:
            self._open()
        assert self._catalog is not None
        return self._catalog

    @property
    def blobs(self) -> BlobStore:
        if self._blobs is None:
            self._open()
        assert self._blobs is not None
        return self._blobs

    @property
    def cache_dir(self) -> str:
        """Where downloads and materialized models go: the store's ``cache`` folder, or the
        user's cache folder when the store is read-only (a registry mounted read-only into a
        serving or CI container is still read)."""
        if self._cache_dir is None:
            self._cache_dir = writable_cache_dir(self.home)
        return self._cache_dir

    # -- capture: journal, staging, worker --------------------------------------------------------

    @property
    def journal(self) -> Journal:
        journal = self._journal
        if journal is not None:  # made once, then read on every captured save: no lock
            return journal
        with self._lock:
            if self._journal is None:
                from clearml_hooks.store.journal import Journal
                from clearml_hooks.store.owner import current_owner

                self._journal = Journal(self.journal_roots, current_owner(),
                                        fsync=self.settings.journal_fsync)
                import atexit

                atexit.register(self.close_journal)  # after the tasks' exit waits (LIFO)
            return self._journal

    def close_journal(self) -> None:
        """At exit: a journal with nothing left is removed with this process's staging."""
        journal = self._journal
        if journal is None or journal._pid != os.getpid():
            return
        name = journal.name
        if journal.close():
            from clearml_hooks.store.staging import remove_staging

            remove_staging([os.path.join(self.staging_root, name)])

    @property
    def worker(self) -> Worker:
        worker = self._worker
        if worker is not None:
            return worker
        journal = self.journal
        with self._lock:
            if self._worker is None:
                from clearml_hooks.store.worker import Worker

                worker = Worker(self, journal)
                worker.job_timeout = self.settings.job_timeout
                self._worker = worker  # published whole: it is read without the lock
            return self._worker

    @property
    def journal_roots(self) -> list[str]:
        """Where journals live: the store's folder, then a fallback on another disk (the
        user's state folder) for when the store's disk is full or read-only."""
        state = os.environ.get("XDG_STATE_HOME") or os.path.join(
            os.path.expanduser("~"), ".local", "state")
        return [self.journal_root,
                os.path.join(state, "clearml-hooks", "journal", store_key(self.home))]

    @property
    def staging_dir(self) -> str:
        """This process's staging folder (removed with its journal once all is stored)."""
        return os.path.join(self.staging_root, self.journal.name)

    def staging_device(self) -> int:
        if self._device is None:
            os.makedirs(self.staging_root, exist_ok=True)
            self._device = os.stat(self.staging_root).st_dev
        return self._device


def store_key(home: str) -> str:
    """A short name for a store, for folders of it kept outside it (journal, cache)."""
    import hashlib

    return hashlib.sha256(os.path.abspath(home).encode()).hexdigest()[:16]


def writable_cache_dir(home: str, *parts: str) -> str:
    """``<home>/cache/<parts>``, or the same under the user's cache folder
    (``$XDG_CACHE_HOME/clearml-hooks/<store key>``) when the store cannot be written."""
    inside = os.path.join(home, "cache", *parts)
    probe = inside
    while not os.path.exists(probe):  # the nearest folder that exists decides
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.access(probe, os.W_OK):
        return inside
    user = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(user, "clearml-hooks", store_key(home), *parts)


CATALOG_GROUP = "clearml_hooks.catalogs"


def open_catalog(url: str, timeout: float = 30.0) -> SqlCatalog:
    """The catalog class registered for the URL's dialect (``sqlite``, ``postgresql``; a
    driver suffix such as ``+psycopg`` is the catalog's business) in the ``clearml_hooks.catalogs``
    entry-point group, opened on ``url``."""
    from clearml_hooks import plugins

    dialect = url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""
    available = plugins.entry_points(CATALOG_GROUP)
    ref = available.get(dialect)
    if ref is None:
        raise ValueError(f"no catalog for {dialect or 'this'!r} URLs ({_redact(url)}); "
                         f"available: {', '.join(sorted(available)) or 'none'} (catalog_url "
                         "takes a SQLAlchemy URL such as sqlite:///path/catalog.db or "
                         "postgresql://user@host/db)")
    catalog_class = plugins.load(ref)
    return catalog_class(url, timeout=timeout)  # type: ignore[operator]


def _redact(url: str) -> str:
    """A catalog URL without its password, for messages."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


_stores: dict[tuple, Store] = {}
_lock = threading.Lock()


def store_for(settings: Settings) -> Store:
    """One Store per (catalog, blobs) per process."""
    key = (settings.home, settings.catalog_url, settings.blob_url)
    with _lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = Store(settings)
        return store


def open_store(settings: Settings | None = None) -> Store:
    """The store that the environment and config file name, opened (model API, CLI)."""
    store = store_for(settings or Settings.resolve())
    store.wait()
    return store


# -- fork safety ----------------------------------------------------------------------------------

FORK_WAIT = 10.0
_fork_acquired: list[Store] = []
_catalog_acquired = False


def _before_fork() -> None:
    """Make a fork safe for a child that captures (DDP ``ddp_fork`` ranks, workers when
    configured), each step bounded: let a store that is being opened finish (a fork mid-import
    leaves the child half-imported modules), then hold the catalog lock so no thread is inside
    the database at the fork."""
    global _catalog_acquired
    _fork_acquired.clear()
    for store in list(_stores.values()):
        if store._open_lock.acquire(timeout=FORK_WAIT):
            _fork_acquired.append(store)
    import sys

    catalog = sys.modules.get("clearml_hooks.store.catalog")
    _catalog_acquired = bool(catalog is not None and catalog.acquire_for_fork(FORK_WAIT))


def _after_fork_in_parent() -> None:
    import sys

    catalog = sys.modules.get("clearml_hooks.store.catalog")
    if catalog is not None:
        catalog.release_after_fork(_catalog_acquired, child=False)
    for store in _fork_acquired:
        store._open_lock.release()
    _fork_acquired.clear()


def _after_fork_in_child() -> None:
    """The child gets fresh locks, and no database connection of the parent's (SQLAlchemy's
    advice); its journal and worker renew themselves on first use."""
    import sys

    catalog_module = sys.modules.get("clearml_hooks.store.catalog")
    if catalog_module is not None:
        catalog_module.release_after_fork(_catalog_acquired, child=True)
    for store in list(_stores.values()):
        store._open_lock = threading.RLock()
        store._lock = threading.Lock()
        catalog = store._catalog
        if catalog is not None:
            try:
                catalog.engine.dispose(close=False)
            except Exception:
                pass
    _fork_acquired.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
