"""``OutputModel``: a model a task produces. New weights are staged and journaled exactly as a
hooked save is, so they get the same exactness and durability."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from clearml_hooks import context
from clearml_hooks.frameworks import canonical_framework
from clearml_hooks.models.base import Model
from clearml_hooks.models.fetching import blob_store, forget_blob_store, same_store
from clearml_hooks.models.fields import guess_framework, resolve_config, validate_labels
from clearml_hooks.models.urls import normalize_url

if TYPE_CHECKING:
    from clearml_hooks.task import Task


class OutputModel(Model):
    """A model a task produces. Weights go through the content-addressed store (deduplicated),
    in the background by default; the user's files are left alone unless ``auto_delete_file``."""

    _default_output_uri: str | None = None

    def __init__(self, task: Task | None = None, config_text: str | None = None,
                 config_dict: Mapping | None = None,
                 label_enumeration: Mapping[str, int] | None = None, name: str | None = None,
                 tags: Sequence[str] | None = None, comment: str | None = None,
                 framework: str | None = None, base_model_id: str | None = None) -> None:
        from clearml_hooks.store import model_ops
        if task is None:
            task = context.current_task()
            if task is None:
                raise ValueError("OutputModel needs a task: pass task=... or call Task.init() first")
        text, cdict = resolve_config(config_text, config_dict)
        labels = validate_labels(label_enumeration) if label_enumeration is not None else None
        tags = model_ops.clean_tags(tags) if tags is not None else None
        self._task = task
        self._store = task.store
        self._link_name = None
        self._upload_url: str | None = None
        task.wait_registered()
        catalog = task.store.catalog
        task_row = catalog.get_task(task.id) or {}
        if base_model_id:
            model_ops.get_row(catalog, base_model_id)
            values: dict[str, Any] = {"task_id": task.id}
            if labels is not None:
                values["labels"] = json.dumps(labels)
            if text is not None:
                values["config_text"], values["config_dict"] = text, cdict
            if name:
                values["name"] = name
            if comment is not None:
                values["comment"] = comment
            if framework:
                values["framework"] = canonical_framework(framework)
            model_ops.update_fields(catalog, base_model_id, check_published=True, **values)
            if tags is not None:
                model_ops.set_tags(catalog, base_model_id, tags)
            self._id = base_model_id
            catalog.link_model(task.id, base_model_id, "output")
        else:
            if labels is None:
                labels = json.loads(task_row.get("labels") or "{}")
            self._id = model_ops.create_model(
                catalog, name=name or task.name, project_id=task_row.get("project_id"),
                task_id=task.id, origin="manual", framework=canonical_framework(framework),
                comment=comment or "", tags=tags or [], labels=labels, config_text=text,
                config_dict=json.loads(cdict) if cdict else None,
                parent_id=parent_input(task, name), link_direction="output")
        if self._default_output_uri:
            self.set_upload_destination(self._default_output_uri)

    @classmethod
    def attached(cls, task: Task, model_id: str, link_name: str | None = None) -> OutputModel:
        """An existing output model of ``task`` (no new row): new weights add snapshots to it."""
        model = cls.__new__(cls)
        model._task = task
        model._store = task.store
        model._id = model_id
        model._link_name = link_name
        model._upload_url = None
        return model

    # -- ClearML's read-write properties --------------------------------------------------------

    @Model.config_text.setter  # type: ignore[attr-defined]
    def config_text(self, value: str) -> None:
        self.update_design(config_text=value)

    @Model.config_dict.setter  # type: ignore[attr-defined]
    def config_dict(self, value: Mapping) -> None:
        self.update_design(config_dict=value)

    @Model.labels.setter  # type: ignore[attr-defined]
    def labels(self, value: Mapping[str, int]) -> None:
        self.update_labels(value)

    @property
    def upload_storage_uri(self) -> str:
        return self._upload_url or self._store.blobs.url

    # -- connecting -----------------------------------------------------------------------------

    def connect(self, task: Task, name: str | None = None) -> None:
        """Name this model on its task (``task.models['output'][name]``)."""
        if task is not self._task and getattr(task, "id", None) != self._task.id:
            raise ValueError("an OutputModel can only be connected to the task that created it")
        self._link_name = name
        self._store.catalog.link_model(task.id, self._id, "output", name=name)
        if not task.get_labels_enumeration():
            labels = self.labels
            if labels:
                task.connect_label_enumeration(labels)

    # -- design and labels ----------------------------------------------------------------------

    def update_labels(self, labels: Mapping[str, int]) -> bool:
        """Replace the label enumeration (``{label: int}``); the task takes it if it has none."""
        from clearml_hooks.store import model_ops

        labels = validate_labels(labels)
        model_ops.update_fields(self._catalog, self._id, check_published=True,
                                labels=json.dumps(labels))
        if not self._task.get_labels_enumeration():
            self._task.connect_label_enumeration(labels)
        return True

    def update_design(self, config_text: str | None = None,
                      config_dict: Mapping | None = None) -> bool:
        from clearml_hooks.store import model_ops

        text, cdict = resolve_config(config_text, config_dict)
        model_ops.update_fields(self._catalog, self._id, check_published=True,
                                config_text=text, config_dict=cdict)
        return True

    # -- destinations ---------------------------------------------------------------------------

    def set_upload_destination(self, uri: str) -> None:
        """Store this model's weights under ``uri`` (a folder or s3://, gs://, ...), still
        content-addressed. ``ValueError`` when the destination cannot be written."""
        if not uri:
            return
        uri = os.fspath(uri)
        if "://" not in uri:
            uri = os.path.abspath(os.path.expanduser(uri))
        try:
            blobs = blob_store(uri)
            blobs.writable()
        except ValueError:
            raise
        except Exception as exc:
            forget_blob_store(uri)
            raise ValueError(f"cannot write to the upload destination {uri}: "
                             f"{type(exc).__name__}: {exc}") from exc
        self._upload_url = None if same_store(blobs.url, self._store.blobs.url) else uri

    @classmethod
    def set_default_upload_uri(cls, output_uri: str | None) -> None:
        cls._default_output_uri = str(output_uri) if output_uri else None

    @classmethod
    def wait_for_uploads(cls, timeout: float | None = None,
                         max_num_uploads: int | None = None) -> bool:
        """Wait until every weights upload started in this process is stored; False on timeout."""
        current = context.current_task()
        if current is None:
            return True
        current.store.worker.start()
        return current.store.worker.wait(timeout)

    # -- weights --------------------------------------------------------------------------------

    def update_weights(self, weights_filename: str | None = None, upload_uri: str | None = None,
                       target_filename: str | None = None, auto_delete_file: bool = False,
                       register_uri: str | None = None, iteration: int | None = None,
                       update_comment: bool = True, is_package: bool = False,
                       async_enable: bool = True, **kwargs: Any) -> str | None:
        """Store a new snapshot of this model from a file (a folder is stored as a package), or
        register weights already at ``register_uri`` (alias ``registered_uri``).

        Returns the weights URL once known: at once with ``register_uri`` or
        ``async_enable=False``; with ``async_enable=True`` the bytes are hashed and stored in the
        background and None is returned (``wait_for_uploads``, then ``url``).
        """
        if "registered_uri" in kwargs:
            if register_uri is not None:
                raise ValueError("pass register_uri or registered_uri, not both")
            register_uri = kwargs.pop("registered_uri")
        if kwargs:
            raise TypeError(f"update_weights() got unexpected keyword arguments: {sorted(kwargs)}")
        if (weights_filename is None) == (register_uri is None):
            raise ValueError("update_weights needs exactly one of weights_filename (a local file "
                             "to store) or register_uri (weights already stored elsewhere)")
        # a published model is refused inside the journal transaction (no extra round trip)
        if iteration is None:
            iteration = self._task.capturer.iteration
        elif not isinstance(iteration, int) or isinstance(iteration, bool):
            raise ValueError(f"iteration must be an integer, got {iteration!r}")
        if register_uri is not None:
            from clearml_hooks.store import model_ops

            url = normalize_url(register_uri)
            model_ops.register_uri(self._catalog, self._id, url, iteration=iteration,
                                   framework=None if self.framework else guess_framework(url),
                                   comment=None, is_package=is_package)
            return url
        path = os.path.abspath(os.fspath(weights_filename))
        if not os.path.exists(path):
            raise ValueError(f"weights file {path} does not exist")
        if upload_uri:
            self.set_upload_destination(upload_uri)
        if os.path.isdir(path):
            return self._store_weights([path], root=path, kind="dir", name=target_filename,
                                       iteration=iteration, is_package=True,
                                       auto_delete=auto_delete_file, async_enable=async_enable)
        return self._store_weights([path], root=None, kind="file", name=target_filename,
                                   iteration=iteration, is_package=is_package,
                                   auto_delete=auto_delete_file, async_enable=async_enable)

    def update_weights_package(self, weights_filenames: Sequence[str] | None = None,
                               weights_path: str | None = None, upload_uri: str | None = None,
                               target_filename: str | None = None, iteration: int | None = None,
                               async_enable: bool = True, auto_delete_file: bool = False) -> str | None:
        """Store several files (or a folder) as one package snapshot; files keep their paths
        relative to their common folder."""
        if (not weights_filenames) == (not weights_path):
            raise ValueError("update_weights_package needs exactly one of weights_filenames "
                             "(a list of files) or weights_path (a folder)")
        if self.published:
            from clearml_hooks.store.model_ops import ModelPublished

            raise ModelPublished(f"model {self._id} is published: its weights cannot be updated")
        if iteration is None:
            iteration = self._task.capturer.iteration
        if upload_uri:
            self.set_upload_destination(upload_uri)
        if weights_path:
            root = os.path.abspath(os.fspath(weights_path))
            if not os.path.isdir(root):
                raise ValueError(f"weights_path {root} is not a folder")
            paths = [root]
        else:
            if isinstance(weights_filenames, (str, os.PathLike)):
                weights_filenames = [weights_filenames]  # type: ignore[list-item]
            paths = [os.path.abspath(os.fspath(p)) for p in weights_filenames or []]
            missing = [p for p in paths if not os.path.isfile(p)]
            if missing:
                raise ValueError(f"weights files do not exist: {', '.join(missing)}")
            root = os.path.commonpath([os.path.dirname(p) for p in paths])
        return self._store_weights(paths, root=root, kind="dir", name=target_filename,
                                   iteration=iteration, is_package=True,
                                   auto_delete=auto_delete_file, async_enable=async_enable)

    def _store_weights(self, paths: list[str], *, root: str | None, kind: str, name: str | None,
                       iteration: int | None, is_package: bool, auto_delete: bool,
                       async_enable: bool) -> str | None:
        """Stage and journal the files as a new snapshot, exactly as a hooked save is (same
        exactness and durability); the worker stores it."""
        import stat as stat_module

        from clearml_hooks.store import model_ops
        from clearml_hooks.store.safe_paths import safe_target_filename

        if name is not None:
            name = safe_target_filename(name)
        if kind == "file":
            files = [(paths[0], name or os.path.basename(paths[0]))]
            source = paths[0]
        else:
            files = []
            for p in paths:
                if os.path.isdir(p):
                    for folder, _dirs, names in os.walk(p):
                        for n in names:
                            full = os.path.join(folder, n)
                            files.append((full, os.path.relpath(full, root)))
                else:
                    files.append((p, os.path.relpath(p, root)))
            files.sort(key=lambda item: item[1])
            if not files:
                raise ValueError(f"no files to store in {root}")
            source = os.path.join(root or "", name) if name else root
        for full, _rel in files:
            mode = os.stat(full).st_mode
            if not stat_module.S_ISREG(mode):
                raise ValueError(f"{full} is not a regular file (a FIFO, device or socket "
                                 "cannot be stored as weights): pass the path of a file")
        row = model_ops.get_row(self._catalog, self._id)
        if row["published"]:
            raise model_ops.ModelPublished(
                f"model {self._id} is published: its weights cannot be updated")
        dest = self._upload_url
        capturer = self._task.capturer
        record = capturer.journal_snapshot(
            files, source=source or "", kind=kind, name=row["name"],
            framework=guess_framework(files[0][1]) if kind == "file" else None,
            iteration=iteration, model_id=self._id, dest=dest, is_package=is_package,
            strict=True)
        if auto_delete:
            for full, _rel in files:
                try:
                    os.unlink(full)
                except OSError:
                    pass
            if kind == "dir" and root and len(paths) == 1 and os.path.isdir(paths[0]):
                shutil.rmtree(paths[0], ignore_errors=True)
        if async_enable:
            return None
        worker = self._store.worker
        worker.start()
        if not worker.event_for(record.rid).wait(self._task.settings.exit_timeout):
            raise ValueError(f"storing the weights of model {self._id} did not finish in "
                             f"{self._task.settings.exit_timeout:.0f} s"
                             + (f" ({worker.last_error})" if worker.last_error else "")
                             + "; they stay journaled and are stored later")
        snap = self._catalog.snapshot(record.rid) or {}
        if snap.get("state") != "ready":
            raise ValueError(f"storing the weights of model {self._id} failed: "
                             f"{snap.get('error') or snap.get('state') or worker.outcome(record.rid)}")
        return self.url


def parent_input(task: Task, name: str | None) -> str | None:
    """The task's input model this output was trained from: same name, or the only input."""
    from clearml_hooks.store import model_ops

    inputs = model_ops.task_inputs(task.store.catalog, task.id)
    if name:
        for model_id, link_name in inputs:
            if link_name == name:
                return model_id
    return inputs[0][0] if len(inputs) == 1 else None
