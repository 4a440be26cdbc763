"""The web UI's routes (Starlette): HTML pages, form POSTs for edits, and the JSON API under
``/api/v1/``. Routes only: queries live in ``clearml_hooks.store`` (``model_table``,
``model_view``), edits in ``actions`` (the SDK's ``Model``), markup in ``templates/``.

Database work runs in Starlette's thread pool (sync endpoints), never on the event loop.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from clearml_hooks.models import Model
from clearml_hooks.store import model_metrics, model_table, model_view
from clearml_hooks.store.model_ops import UnknownModel
from clearml_hooks.store.model_table import TableError, cell_value
from clearml_hooks.ui import actions, charts, params
from clearml_hooks.ui.security import SecurityMiddleware

if TYPE_CHECKING:
    from clearml_hooks.store import Store
    from clearml_hooks.ui.security import Guard

HERE = Path(__file__).resolve().parent
MAX_COMPARE = 20
NAV_TTL = 5.0
CHART_POINTS = 2_000  # per series drawn on a page
API_ROUTES = {
    "/api/v1/models": "the model table: the same parameters as / (columns, filters, sort, paging)",
    "/api/v1/models/{id}": "one model: properties, metadata, labels, design, versions, lineage",
    "/api/v1/models/{id}/scalars": "scalars {title: {series: {x, y}}} and single values "
                                   "(max_samples=N averages each series down to N points)",
    "/api/v1/models/{id}/plots": "plots as plotly figures (ClearML's get_reported_plots)",
    "/api/v1/compare?ids=a,b": "models side by side with their scalars and single values",
    "/api/v1/tasks": "tasks, newest first (project, limit, offset)",
    "/api/v1/tasks/{id}": "one task with the models it wrote and loaded",
}


# -- rendering helpers ---------------------------------------------------------------------------

def _when(iso_or_ts: Any) -> str:
    if iso_or_ts is None:
        return ""
    ts = iso_or_ts if isinstance(iso_or_ts, (int, float)) else \
        _dt.datetime.fromisoformat(iso_or_ts).timestamp()
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _size(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    # ``json`` is for text shown in <pre>/<textarea> (autoescaped like any string); ``tojson``
    # (Jinja's) is only for data inside <script type="application/json">
    env.filters.update(when=_when, size=_size, num=_num,
                       json=lambda v, indent=None: json.dumps(v, indent=indent, ensure_ascii=False))
    env.globals.update(params=params, cell_value=cell_value)
    return env


def _plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


# -- the app ----------------------------------------------------------------------------------------

def create_app(store: Store, guard: Guard) -> Any:
    env = _environment()
    plotly_js = _plotly_js()

    def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(template).render(
            request=request, csrf=guard.csrf_token(), read_only=guard.read_only,
            path_qs=_path_qs(request), **context)
        return HTMLResponse(html, status_code=status)

    def api(value: Any, status: int = 200) -> Response:
        body = json.dumps(value, default=str, allow_nan=False, separators=(",", ":"))
        return Response(body, status_code=status, media_type="application/json")

    # -- the model table ---------------------------------------------------------------------

    def read_table(request: Request) -> tuple[Any, Any]:
        query = params.table_query(request.query_params)
        return query, model_table.page(store.catalog, query)

    nav_cache: dict[str, tuple[float, Any]] = {}

    def cached(key: str, compute: Any) -> Any:
        """Project and framework lists for the table's navigation: each is a scan of every
        model, so they are reused for NAV_TTL seconds (a new project shows up within that)."""
        hit = nav_cache.get(key)
        if hit is None or time.monotonic() - hit[0] > NAV_TTL:
            hit = nav_cache[key] = (time.monotonic(), compute(store.catalog))
        return hit[1]

    def table(request: Request) -> Response:
        query, result = read_table(request)
        ids = [r["id"] for r in result.rows]
        offered = model_table.available_columns(store.catalog, ids)
        return page(request, "table.html", query=query, result=result,
                    projects=cached("projects", model_table.projects),
                    frameworks=cached("frameworks", model_table.frameworks),
                    offered=[c for c in offered if c not in {x.key for x in query.columns}],
                    builtins=model_table.BUILTIN_COLUMNS)

    def api_models(request: Request) -> Response:
        query, result = read_table(request)
        rows = []
        for r in result.rows:
            item = model_view.model_json(r)
            item["columns"] = {c.key: cell_value(r, c) for c in query.columns if c.kind != "builtin"}
            rows.append(_finite(item))
        return api({"models": rows, "total": result.total, "offset": query.offset,
                    "limit": query.limit,
                    "next_offset": query.offset + query.limit if result.more else None})

    # -- one model --------------------------------------------------------------------------

    def model_data(model_id: str) -> dict:
        """A model for the page: its scalars at most CHART_POINTS per series (long series from
        the database's roll-up, ``model_metrics``); the API returns every point."""
        info = model_view.model_detail(store.catalog, model_id)
        model = Model(model_id, store=store)
        info["scalars"] = model_metrics.chart_series(store.catalog, model_id, CHART_POINTS)
        info["single_values"] = model.get_reported_single_values()
        info["plots"] = model.get_reported_plots()
        return info

    def model_page(request: Request) -> Response:
        info = model_data(request.path_params["model_id"])
        return page(request, "model.html", m=info,
                    scalar_charts=charts.scalar_figures(info["scalars"]),
                    plot_charts=charts.plot_figures(info["plots"]),
                    metadata_types=actions.METADATA_TYPES)

    def api_model(request: Request) -> Response:
        return api(model_view.model_detail(store.catalog, request.path_params["model_id"]))

    def api_scalars(request: Request) -> Response:
        model = Model(request.path_params["model_id"], store=store)
        samples = params.integer(request.query_params.get("max_samples"), "max_samples", 0)
        return api(_finite({"scalars": model.get_reported_scalars(max_samples=samples),
                            "single_values": model.get_reported_single_values()}))

    def api_plots(request: Request) -> Response:
        model = Model(request.path_params["model_id"], store=store)
        plots = model.get_reported_plots()
        for p in plots:
            p.pop("figure")
        return api({"plots": plots})

    def download(request: Request) -> Response:
        model = Model(request.path_params["model_id"], store=store)
        try:
            version = int(request.path_params["version"])
        except ValueError:
            raise TableError("version must be an integer") from None
        path = model.get_local_copy(extract_archive=False, raise_on_error=True, version=version)
        if not path or not os.path.isfile(path):
            raise HTTPException(404, f"version {version} of model {model.id} has no file")
        return FileResponse(path, filename=os.path.basename(path),
                            media_type="application/octet-stream")

    # -- compare ------------------------------------------------------------------------------

    def compare_data(request: Request) -> list[dict]:
        ids = [i for i in (request.query_params.get("ids") or "").split(",") if i]
        ids = list(dict.fromkeys(ids))
        if not 1 <= len(ids) <= MAX_COMPARE:
            raise TableError(f"compare takes 1 to {MAX_COMPARE} model ids: ?ids=a,b,...")
        return [model_data(i) for i in ids]

    def compare(request: Request) -> Response:
        models = compare_data(request)
        labels = [f"{m['name']} ({m['id'][:6]})" for m in models]
        props = ["name", "project", "framework", "iteration", "versions", "published", "archived",
                 "tags", "comment", "task_name", "updated"]
        keys = sorted({k for m in models for k in m["metadata"]})
        singles = sorted({k for m in models for k in m["single_values"]})
        plot_keys = list(dict.fromkeys((p["metric"], p["variant"]) for m in models
                                       for p in m["plots"]))
        plots = {(p["title"], p["series"], i): p for i, m in enumerate(models)
                 for p in charts.plot_figures(m["plots"])}
        return page(request, "compare.html", models=models, labels=labels, props=props,
                    metadata_keys=keys, single_keys=singles, plot_keys=plot_keys, plots=plots,
                    charts_=charts.compare_figures(
                        [(label, m["scalars"]) for label, m in zip(labels, models, strict=True)]))

    def api_compare(request: Request) -> Response:
        models = compare_data(request)
        for m in models:
            m.pop("plots")
        return api(_finite({"models": models}))

    # -- tasks ----------------------------------------------------------------------------------

    def task_list(request: Request) -> tuple[list[dict], bool, int, int]:
        q = request.query_params
        limit = params.integer(q.get("limit"), "limit", params.DEFAULT_LIMIT)
        offset = params.integer(q.get("offset"), "offset", 0)
        if not 1 <= limit <= model_table.MAX_LIMIT or offset < 0:
            raise TableError("limit must be 1..1000 and offset >= 0")
        rows, more = model_view.list_tasks(store.catalog, q.get("project") or None, limit, offset)
        return rows, more, limit, offset

    def tasks(request: Request) -> Response:
        rows, more, limit, offset = task_list(request)
        return page(request, "tasks.html", tasks=rows, more=more, limit=limit, offset=offset,
                    project=request.query_params.get("project", ""))

    def api_tasks(request: Request) -> Response:
        rows, more, limit, offset = task_list(request)
        return api({"tasks": rows, "offset": offset, "limit": limit,
                    "next_offset": offset + limit if more else None})

    def task_page(request: Request) -> Response:
        return page(request, "task.html",
                    t=model_view.task_detail(store.catalog, request.path_params["task_id"]))

    def api_task(request: Request) -> Response:
        return api(model_view.task_detail(store.catalog, request.path_params["task_id"]))

    # -- edits (POST; the middleware has checked Origin and read-only) -------------------------------

    async def form_of(request: Request) -> dict[str, list[str]]:
        body = await request.body()
        if len(body) > 1_000_000:
            raise TableError("form too large")
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        token = (form.get("csrf") or [None])[0]
        if not guard.csrf_ok(token):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
        return form

    async def model_action(request: Request) -> Response:
        form = await form_of(request)
        model_id, action = request.path_params["model_id"], request.path_params["action"]
        flat = {k: v[0] for k, v in form.items()}
        await run_in_threadpool(actions.apply, store, model_id, action, flat)
        target = params.safe_next(flat.get("next"), f"/models/{model_id}")
        return RedirectResponse(target, status_code=303)

    async def batch_action(request: Request) -> Response:
        form = await form_of(request)
        flat = {k: v[0] for k, v in form.items()}
        await run_in_threadpool(actions.apply_batch, store, form.get("ids", []),
                                flat.get("action", ""), flat)
        return RedirectResponse(params.safe_next(flat.get("next")), status_code=303)

    # -- static files ---------------------------------------------------------------------------

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "plotly.min.js":
            path = plotly_js
        elif name in ("app.js", "app.css"):
            path = HERE / "static" / name
        else:
            raise HTTPException(404, f"no file {name}")
        return FileResponse(path, headers={"cache-control": "public, max-age=86400"})

    def api_index(request: Request) -> Response:
        return api({"version": "v1", "endpoints": API_ROUTES})

    # -- errors ---------------------------------------------------------------------------------

    def error(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return api({"error": message, "status": status}, status)
        return page(request, "error.html", status, code=status, message=message)

    async def on_error(request: Request, exc: Exception) -> Response:
        from clearml_hooks.store import StoreUnavailable

        if isinstance(exc, HTTPException):
            status, message = exc.status_code, str(exc.detail)
            if status == 404 and message == "Not Found":
                message = f"no page at {request.url.path}"
        elif isinstance(exc, UnknownModel):  # not str(exc): it names the store's folder
            status, message = 404, f"no model with id {exc.model_id!r}"
        elif isinstance(exc, model_view.UnknownTask):
            status, message = 404, str(exc)
        elif isinstance(exc, (TableError, actions.ActionError, ValueError)):
            status, message = 400, str(exc)
        elif isinstance(exc, StoreUnavailable):
            status, message = 503, str(exc).splitlines()[0]
        else:
            # anything else is our bug: still the documented error shape (JSON under /api/),
            # no traceback to the client; Starlette re-raises it after this, so it is logged
            status, message = 500, "internal error (the server's log has the details)"
        return error(request, status, message)

    routes = [
        Route("/", table), Route("/models/{model_id}", model_page),
        Route("/models/{model_id}/versions/{version}/download", download),
        Route("/models/{model_id}/actions/{action}", model_action, methods=["POST"]),
        Route("/actions/batch", batch_action, methods=["POST"]),
        Route("/compare", compare), Route("/tasks", tasks), Route("/tasks/{task_id}", task_page),
        Route("/static/{name}", static),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/api/v1", api_index), Route("/api/v1/models", api_models),
        Route("/api/v1/models/{model_id}", api_model),
        Route("/api/v1/models/{model_id}/scalars", api_scalars),
        Route("/api/v1/models/{model_id}/plots", api_plots),
        Route("/api/v1/compare", api_compare), Route("/api/v1/tasks", api_tasks),
        Route("/api/v1/tasks/{task_id}", api_task),
    ]
    handlers = {HTTPException: on_error, ValueError: on_error, Exception: on_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    return SecurityMiddleware(app, guard)


def _path_qs(request: Request) -> str:
    query = request.url.query
    return request.url.path + ("?" + query if query else "")


def _finite(value: Any) -> Any:
    """JSON has no NaN: non-finite floats become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
