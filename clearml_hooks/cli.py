"""The ``clearml-hooks`` command line: browse and manage the model registry, finish pending uploads.

Tables (rich) for people, ``--json`` for scripts. Bad arguments or an unknown id print one line
on stderr and exit with status 2. The store is ``--home DIR``, else ``CLEARML_HOOKS_HOME`` / the
config file (``Settings.resolve``).
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import shutil
import sys
from typing import Any

import click

from clearml_hooks import __version__


class CliError(click.ClickException):
    """A one-line error; exit status 2 like click's own usage errors."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"clearml-hooks: error: {self.format_message()}", err=True)


def _errors(fn):
    """Turn the API's ValueError / store errors into one line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from clearml_hooks.store import StoreUnavailable

        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except (ValueError, StoreUnavailable) as exc:
            raise CliError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc

    return wrapper


def _require_home(home: str) -> None:
    if not os.path.isdir(home):
        raise CliError(f"no model store at {home} (nothing was captured there yet); check "
                       "--home or CLEARML_HOOKS_HOME")


def _store(ctx: click.Context, recover_rows: bool = True, require: bool = True):
    """The store, opened; what dead runs left journaled shows as tasks and pending snapshots."""
    from clearml_hooks.config import Settings
    from clearml_hooks.store import store_for

    obj = ctx.find_root().obj
    if obj.get("store") is None:
        settings = Settings.resolve(home=obj.get("home"))
        if require and settings.catalog_url == "sqlite:///" + os.path.join(settings.home,
                                                                           "catalog.db"):
            _require_home(settings.home)  # a mistyped --home must not create a store there
        store = store_for(settings)
        store.wait()
        if recover_rows and any(os.path.isdir(r) for r in store.journal_roots):
            from clearml_hooks.store.recovery import recover

            recover(store, rows_only=True)
        obj["store"] = store
    return obj["store"]


def _model(ctx: click.Context, model_id: str):
    from clearml_hooks.models import Model

    return Model(model_id, store=_store(ctx))


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _console():
    from rich.console import Console

    # scripts that want to parse use --json; a pipe still gets full-width rows
    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 220)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False), default=None,
              help="Store directory (default: CLEARML_HOOKS_HOME, the config file, ~/.clearml-hooks).")
@click.version_option(__version__, prog_name="clearml-hooks")
@click.pass_context
def cli(ctx: click.Context, home: str | None) -> None:
    """Browse and manage the models that clearml-hooks captured and registered."""
    ctx.ensure_object(dict)
    ctx.obj["home"] = home


# -- models -----------------------------------------------------------------------------------------

@cli.group()
def models() -> None:
    """List, show, download, publish, archive and tag models."""


@models.command("list")
@click.option("--project", default=None, help="Only this project (exact name).")
@click.option("--name", default=None, help="Only models with this exact name.")
@click.option("--tag", "tags", multiple=True,
              help="Tag filter, repeatable: OR by default, -tag excludes, __$and/__$or/__$not.")
@click.option("--published", is_flag=True, help="Only published models.")
@click.option("--archived", is_flag=True, help="Include archived models.")
@click.option("--framework", default=None, help="Only this framework (PyTorch, Keras, ...).")
@click.option("--metadata", "metadata", multiple=True, metavar="KEY=VALUE",
              help="Exact metadata match, repeatable.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N models.")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip the first N models.")
@click.option("--sort", "order_by", default="-updated", show_default=True,
              help="updated, created, name or iteration; '-' prefix for descending.")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
@click.pass_context
@_errors
def models_list(ctx: click.Context, project, name, tags, published, archived, framework, metadata,
                limit, offset, order_by, as_json) -> None:
    """Models, most recently updated first."""
    from clearml_hooks.frameworks import canonical_framework
    from clearml_hooks.store import model_ops, model_view

    meta = {}
    for item in metadata:
        if "=" not in item:
            raise CliError(f"--metadata expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        meta[key] = value
    rows = model_ops.query(
        _store(ctx).catalog, project_name=project, model_name=name, tags=list(tags) or None,
        only_published=published, include_archived=archived, max_results=limit, metadata=meta,
        framework=canonical_framework(framework) if framework else None, order_by=order_by,
        offset=offset)
    # the UI's rows and JSON (with version counts and task names), in the query's order
    rows = model_view.model_rows(_store(ctx).catalog, [r["id"] for r in rows])
    if as_json:
        _echo_json([model_view.model_json(r) for r in rows])
        return
    from rich.table import Table

    table = Table(title=f"{len(rows)} model(s)", title_justify="left")
    for col in ("id", "name", "project", "framework", "iter", "tags", "status", "updated"):
        table.add_column(col, no_wrap=col in ("id", "updated"))
    for r in rows:
        status = "published" if r["published"] else ("stored" if r["ready"] else "pending")
        if r["archived"]:
            status += ", archived"
        table.add_row(r["id"], r["name"], r["project"] or "", r["framework"] or "",
                      "" if r["iteration"] is None else str(r["iteration"]),
                      ", ".join(json.loads(r["tags"])), status, _when(r["updated"]))
    _console().print(table)


@models.command("show")
@click.argument("model_id")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
@click.pass_context
@_errors
def models_show(ctx: click.Context, model_id: str, as_json: bool) -> None:
    """Everything about one model: fields, metadata, labels, snapshots, tasks."""
    from clearml_hooks.store import model_metrics, model_view

    info = model_view.model_summary(_store(ctx).catalog, model_id)
    if as_json:
        _echo_json(info)
        return
    from rich.table import Table

    table = Table(show_header=False, title=f"model {model_id}", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    for key in ("name", "project", "framework", "iteration", "url", "task", "parent", "origin",
                "published", "archived", "ready", "created", "updated", "comment"):
        value = info[key]
        table.add_row(key, "" if value is None else str(value))
    table.add_row("tags", ", ".join(info["tags"]))
    table.add_row("system tags", ", ".join(info["system_tags"]))
    if info["labels"]:
        table.add_row("labels", json.dumps(info["labels"]))
    for key, entry in info["metadata"].items():
        table.add_row(f"metadata.{key}", f"{entry['value']} ({entry['type']})")
    console = _console()
    console.print(table)
    if info["snapshots"]:
        snaps = Table(title="snapshots", title_justify="left")
        failed = any(s["error"] for s in info["snapshots"])  # why, next to the version it hit
        for col in ("version", "iteration", "state", "size", "digest", "created", "file",
                    *(["error"] if failed else [])):
            snaps.add_column(col, overflow="fold")
        for s in info["snapshots"]:
            snaps.add_row(str(s["version"]), "" if s["iteration"] is None else str(s["iteration"]),
                          s["state"], "" if s["size"] is None else str(s["size"]),
                          (s["digest"] or "")[:16], s["created"] or "",
                          os.path.basename(s["source"] or ""),
                          *([s["error"] or ""] if failed else []))
        console.print(snaps)
    if info["scalars"] or info["single_values"]:
        scalars = Table(title="scalars (latest value)", title_justify="left")
        for col in ("title", "series", "iteration", "last", "min", "max"):
            scalars.add_column(col)
        for r in info["scalars"]:
            scalars.add_row(r["title"], r["series"], str(r["iteration"]),
                            *(f"{r[k]:.6g}" for k in ("last", "min", "max")))
        for name, value in info["single_values"].items():
            scalars.add_row(model_metrics.SUMMARY_TITLE, name, "", f"{value:.6g}", "", "")
        console.print(scalars)


@models.command("get")
@click.argument("model_id")
@click.option("--dest", type=click.Path(file_okay=False), default=None,
              help="Copy the weights into this folder (default: print the cached path).")
@click.option("--version", type=click.IntRange(min=1), default=None, help="An older snapshot.")
@click.option("--force", is_flag=True, help="Download again even if cached.")
@click.pass_context
@_errors
def models_get(ctx: click.Context, model_id: str, dest: str | None, version: int | None,
               force: bool) -> None:
    """Download a model's weights; prints the local path."""
    model = _model(ctx, model_id)
    path = model.get_local_copy(raise_on_error=True, force_download=force, version=version)
    if path is None:
        raise CliError(f"model {model_id} has no weights to download")
    if dest:
        os.makedirs(dest, exist_ok=True)
        target = os.path.join(dest, os.path.basename(path.rstrip(os.sep)))
        if os.path.isdir(path):
            shutil.copytree(path, target, dirs_exist_ok=True)
        else:
            shutil.copyfile(path, target)
        path = target
    click.echo(path)


@models.command("publish")
@click.argument("model_id")
@click.pass_context
@_errors
def models_publish(ctx: click.Context, model_id: str) -> None:
    """Publish a model (a no-op if it already is)."""
    from clearml_hooks.store import model_ops

    changed = model_ops.publish(_store(ctx).catalog, model_id)
    click.echo(f"{model_id} {'published' if changed else 'was already published'}")


@models.command("archive")
@click.argument("model_id")
@click.option("--undo", is_flag=True, help="Unarchive instead.")
@click.pass_context
@_errors
def models_archive(ctx: click.Context, model_id: str, undo: bool) -> None:
    """Archive a model (hidden from queries unless asked for)."""
    from clearml_hooks.store import model_ops

    changed = model_ops.set_archived(_store(ctx).catalog, model_id, not undo)
    word = "unarchived" if undo else "archived"
    click.echo(f"{model_id} {word}" if changed else f"{model_id} was already {word}")


@models.command("tag", context_settings={"ignore_unknown_options": True})
@click.argument("model_id")
@click.argument("changes", nargs=-1, type=click.UNPROCESSED)
@click.option("--json", "as_json", is_flag=True, help="Print the resulting tags as JSON.")
@click.pass_context
@_errors
def models_tag(ctx: click.Context, model_id: str, changes: tuple[str, ...], as_json: bool) -> None:
    """Add (+tag or tag) and remove (-tag) tags: models tag ID +best -draft."""
    from clearml_hooks.store import model_ops

    if not changes:
        raise CliError("give tags to add (+tag) or remove (-tag)")
    add, remove = [], []
    for change in changes:
        if change.startswith("-"):
            remove.append(change[1:])
        else:
            add.append(change[1:] if change.startswith("+") else change)
    tags = model_ops.edit_tags(_store(ctx).catalog, model_id, add=add, remove=remove)
    if as_json:
        _echo_json(tags)
    else:
        click.echo(f"{model_id} tags: {', '.join(tags) if tags else '(none)'}")


# -- tasks ------------------------------------------------------------------------------------------

@cli.group()
def tasks() -> None:
    """List tasks."""


@tasks.command("list")
@click.option("--project", default=None, help="Only this project.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N tasks.")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
@click.pass_context
@_errors
def tasks_list(ctx: click.Context, project: str | None, limit: int | None, as_json: bool) -> None:
    """Tasks, newest first, with how many models each wrote and read."""
    from clearml_hooks.store import model_view

    store = _store(ctx)
    rows = store.catalog.list_tasks(project=project, limit=limit)
    counts = model_view.task_model_counts(store.catalog, [r["id"] for r in rows])
    out = [model_view.task_json({**r, "output_models": counts.get((r["id"], "output"), 0),
                                 "input_models": counts.get((r["id"], "input"), 0)})
           for r in rows]
    if as_json:
        _echo_json(out)
        return
    from rich.table import Table

    table = Table(title=f"{len(out)} task(s)", title_justify="left")
    for col in ("id", "project", "name", "status", "outputs", "inputs", "created"):
        table.add_column(col, no_wrap=col in ("id", "created"))
    for t, r in zip(out, rows, strict=True):
        table.add_row(t["id"], t["project"], t["name"], t["status"], str(t["output_models"]),
                      str(t["input_models"]), _when(r["created"]))
    _console().print(table)


# -- sync -------------------------------------------------------------------------------------------

@cli.command()
@click.option("--force", is_flag=True,
              help="Also finish journals whose process is still alive (safe: every step is "
                   "idempotent and a stored snapshot is never changed).")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
@click.pass_context
@_errors
def sync(ctx: click.Context, force: bool, as_json: bool) -> None:
    """Finish what crashed, killed or offline runs left in their journals; print the outcome."""
    from clearml_hooks.store.journal import describe
    from clearml_hooks.store.recovery import recover

    store = _store(ctx, recover_rows=False)
    todo = sum(len(j.pending) for j in describe(store.journal_roots) if force or not j.alive)
    show_progress = not as_json and sys.stderr.isatty() and todo
    if show_progress:
        from rich.progress import Progress

        with Progress(transient=True) as progress:
            bar = progress.add_task("storing journaled snapshots", total=todo)
            result = recover(store, force=force, progress=lambda: progress.advance(bar))
    else:
        result = recover(store, force=force)
    items = [{"snapshot": i["rid"], "outcome": i["outcome"], "name": i["name"],
              "source": i["source"]} for i in result.items]
    for item in items:
        snap = store.catalog.snapshot(item["snapshot"]) or {}
        item.update(model=snap.get("model_id"), version=snap.get("version"),
                    error=snap.get("error"))
    finished = [i for i in items if i["outcome"] == "ready"]
    failed = [i for i in items if i["outcome"] not in ("ready", "done")]
    if as_json:
        _echo_json({"finished": finished, "failed": failed,
                    "skipped_alive": result.skipped_alive, "errors": result.errors})
    else:
        for item in finished:
            click.echo(f"stored {item['name']} v{item['version']} (model {item['model']}, "
                       f"snapshot {item['snapshot']})")
        for item in failed:
            click.echo(f"failed {item['name']} v{item['version']} (model {item['model']}): "
                       f"{item['error'] or item['outcome']}")
        for error in result.errors:
            click.echo(f"not finished (will be retried): {error}", err=True)
        if result.skipped_alive:
            click.echo(f"{result.skipped_alive} journal(s) belong to running processes "
                       "(--force to finish them too)", err=True)
        if not items and not result.errors:
            click.echo("nothing to sync")
    if result.errors:
        ctx.exit(1)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
@click.pass_context
@_errors
def status(ctx: click.Context, as_json: bool) -> None:
    """Snapshots waiting in local journals, and the bytes held in staging."""
    from clearml_hooks.config import Settings
    from clearml_hooks.store import store_for
    from clearml_hooks.store.pending import pending_report

    settings = Settings.resolve(home=ctx.find_root().obj.get("home"))
    _require_home(settings.home)
    store = store_for(settings)
    report = pending_report(store.journal_roots, store.staging_root)
    if as_json:
        _echo_json(report)
        return
    rows, pending, staged = report["journals"], report["pending_snapshots"], report["staging_bytes"]
    click.echo(f"{pending} snapshot(s) pending in {len(rows)} journal(s); "
               f"{staged / 2**20:.1f} MiB in staging ({store.staging_root})")
    for r in rows:
        state = "running" if r["alive"] else "process gone: run `clearml-hooks sync`"
        click.echo(f"  {r['owner']}: {r['pending_snapshots']} snapshot(s), "
                   f"{r['pending_records']} record(s) ({state})")
        for snap in r["snapshots"]:
            click.echo(f"    {snap['id']} {snap['source']}"
                       + (f" [{snap['error']}]" if snap["error"] else ""))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; any non-loopback address requires an access token.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8080, show_default=True,
              help="Port (0: any free port).")
@click.option("--home", type=click.Path(file_okay=False), default=None,
              help="Store directory (same as the global --home).")
@click.option("--token", default=None,
              help="Access token required on every request (or CLEARML_HOOKS_UI_TOKEN); "
                   "generated and printed when binding off loopback without one.")
@click.option("--read-only", is_flag=True, help="No edits (publish, archive, tags, ...).")
@click.pass_context
@_errors
def ui(ctx: click.Context, host: str, port: int, home: str | None, token: str | None,
       read_only: bool) -> None:
    """Serve the web model registry (needs the ui extra: pip install clearml-hooks[ui])."""
    try:
        from clearml_hooks.ui import make_server
    except ImportError as exc:
        raise CliError(f"the web UI needs the ui extra (pip install 'clearml-hooks[ui]'): "
                       f"{exc}") from exc
    if home:
        ctx.find_root().obj["home"] = home
    import signal

    try:
        server = make_server(_store(ctx, require=False), host=host, port=port, token=token,
                             read_only=read_only, access_log=True)
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    # Ctrl-C and SIGTERM stop the server even where SIGINT was inherited as ignored (a
    # background job of a non-interactive shell), in which case Python installs no handler
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    mode = " (read-only)" if read_only else ""
    click.echo(f"clearml-hooks model registry on {server.url}{mode} (Ctrl-C to stop)")
    if server.guard.token:
        shown = server.guard.token if server.token_generated else "<your token>"
        click.echo(f"bound to {host}: every request needs the access token; open "
                   f"{server.url}?token={shown} once (or send 'Authorization: Bearer <token>')")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.socket.close()


# -- watch and serve: react to registry events ---------------------------------------------------------

@cli.command()
@click.option("--on", "on", multiple=True, required=True, metavar="EVENT",
              help="publish, archive, unarchive, new-version, tag:NAME, register, any, or an "
                   "event kind (repeatable).")
@click.option("--project", default=None, help="Only models of this project (exact name).")
@click.option("--name", default=None, metavar="REGEX", help="Only models whose name matches.")
@click.option("--exec", "command", default=None, metavar="CMD",
              help='Run CMD per event: "deploy.sh {model_id} {event} {version}" (also in '
                   "CLEARML_HOOKS_* environment variables).")
@click.option("--webhook", default=None, metavar="URL", help="POST each event as JSON to URL.")
@click.option("--secret", default=None, envvar="CLEARML_HOOKS_WEBHOOK_SECRET",
              help="Sign webhook bodies: X-ClearML-Hooks-Signature: sha256=HMAC-SHA256(secret, "
                   "body) (or CLEARML_HOOKS_WEBHOOK_SECRET).")
@click.option("--tries", type=click.IntRange(min=1), default=5, show_default=True,
              help="Webhook tries before the event goes to the dead-letter list.")
@click.option("--backoff", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds before the first webhook retry (doubling each time).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=600.0, show_default=True,
              help="Seconds a command (or 1/60 of it a webhook request) may take.")
@click.option("--consumer", default=None, metavar="NAME",
              help="Durable cursor: after a restart, missed events are delivered once each.")
@click.option("--from-start", is_flag=True,
              help="A new consumer starts at the first event instead of the end of the log.")
@click.pass_context
@_errors
def watch(ctx: click.Context, on, project, name, command, webhook, secret, tries, backoff,
          timeout, consumer, from_start) -> None:
    """Run a command or call a webhook when models are published, tagged, archived, ..."""
    import signal

    from clearml_hooks.watch import ExecTarget, Matcher, Watcher, WebhookTarget

    if bool(command) == bool(webhook):
        raise CliError("give exactly one of --exec CMD or --webhook URL")
    matcher = Matcher(on=list(on), project=project, name=name)
    catalog = _store(ctx, recover_rows=False, require=False).catalog
    if command:
        target = ExecTarget(command, timeout=timeout)
    else:
        target = WebhookTarget(webhook, secret, tries=tries, backoff=backoff,
                               timeout=min(30.0, max(1.0, timeout / 60)), catalog=catalog,
                               consumer=consumer)
    watcher = Watcher(catalog, matcher, target, consumer=consumer, from_start=from_start)

    def _stop(*_):
        watcher.stop()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    who = f" as consumer {consumer!r}" if consumer else ""
    click.echo(f"clearml-hooks watch{who}: {target.describe} on {', '.join(on)} "
               f"after event {watcher.cursor} (Ctrl-C to stop)")
    sys.stdout.flush()
    watcher.run()


@cli.command()
@click.option("--project", default=None, help="Project of the model (exact name).")
@click.option("--name", default=None, help="Model name (exact).")
@click.option("--tag", default=None, help="Serve the newest model carrying this tag.")
@click.option("--published", is_flag=True, help="Serve the newest published model.")
@click.option("--endpoint", required=True, help="Model name in the URLs: /v2/models/ENDPOINT.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True,
              help="Port (0: any free port).")
@click.pass_context
@_errors
def serve(ctx: click.Context, project, name, tag, published, endpoint, host, port) -> None:
    """Serve the newest matching model over KServe V2 REST, swapping on publish / tag.

    Loading a pickled model runs code: serve only models from a registry you trust.
    (Needs the serve extra: pip install 'clearml-hooks[serve]'.)
    """
    if bool(tag) == bool(published):
        raise CliError("give exactly one of --tag T or --published")
    try:
        from clearml_hooks.serve import serve as run_serve
    except ImportError as exc:
        raise CliError(f"serve needs the serve extra (pip install 'clearml-hooks[serve]'): "
                       f"{exc}") from exc
    try:
        run_serve(_store(ctx, recover_rows=False, require=False), endpoint=endpoint, project=project,
                  name=name, tag=tag, published=published, host=host, port=port)
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


# -- run --------------------------------------------------------------------------------------------

@cli.command(context_settings={"allow_interspersed_args": False})
@click.option("--project", default=None, help="Project of the task (default: default).")
@click.option("--task-name", default=None,
              help="Task name (default: the script's name, e.g. train for train.py).")
@click.option("--frameworks", default=None, metavar="JSON",
              help='auto_connect_frameworks as JSON: \'{"pytorch": "final*.pt", "joblib": false}\'.')
@click.option("--output-uri", default=None, help="Store folder or s3://... URL, as Task.init's.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run(ctx: click.Context, project: str | None, task_name: str | None,
        frameworks: str | None, output_uri: str | None, command: tuple[str, ...]) -> None:
    """Run COMMAND with capture on, unchanged: clearml-hooks run -- python train.py.

    COMMAND and every Python process it starts (torchrun workers, multiprocessing and
    torch.multiprocessing spawn, subprocess) join one task; rank 0 captures. The exit status
    and signals pass through.
    """
    from clearml_hooks.launch.run import CommandNotStarted, exit_like, run_command

    home = ctx.find_root().obj.get("home")
    if home:
        os.environ["CLEARML_HOOKS_HOME"] = os.path.abspath(home)
    try:
        returncode = run_command(command, project=project, task_name=task_name,
                                 frameworks=frameworks, output_uri=output_uri)
    except ValueError as exc:
        raise CliError(str(exc).splitlines()[0]) from exc
    except CommandNotStarted as exc:
        click.echo(f"clearml-hooks: error: {exc}", err=True)
        ctx.exit(exc.status)
    ctx.exit(exit_like(returncode))


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``clearml-hooks`` and ``python -m clearml_hooks``)."""
    cli.main(args=argv, prog_name="clearml-hooks", obj={})


if __name__ == "__main__":
    main()
