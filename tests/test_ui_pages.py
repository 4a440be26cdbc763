"""The web model registry, the parts of issue 9 that ``test_ui.py`` leaves out: compare with 10
models, the lineage graph (parent, child, tasks that loaded a model), downloading any version,
batch Publish / Archive / Unarchive / Remove tags seen by the SDK in another process, hostile
task and project names on every page (tasks list and error page included), no request leaving
the server (plotly and everything else from the app), a stored figure's layout drawn as stored,
the printed token of a server bound off loopback, and the same table over PostgreSQL.

A screenshot of every page visited goes to ``$CLEARML_HOOKS_UI_SCREENSHOTS`` when set, else to
pytest's temporary folder (``screenshots/``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import urllib.parse
import uuid
from pathlib import Path

import pytest

from clearml_hooks import InputModel, OutputModel, Task
from tests.conftest import REPO
from tests.test_ui import column, fetch, wait_drawn

EVIL_TASK = "<img src=x onerror=alert('task')>"
EVIL_PROJECT = "<i>proj</i>&amp;"
EVIL_MODEL = "<svg onload=alert('model')>"
EVIL_ID = "<script>alert('id')</script>"
INJECTED = "main script:not(.figure), main img, main svg, main i, main b"


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-pages")
    store_dir = root / "store"
    env = pytest.MonkeyPatch()
    for name, sub in (("HOME", "home"), ("XDG_CACHE_HOME", "home/.cache"),
                      ("XDG_CONFIG_HOME", "home/.config"), ("MPLCONFIGDIR", "home/.mpl")):
        env.setenv(name, str(root / sub))
    env.setenv("CLEARML_HOOKS_HOME", str(store_dir))
    (root / "home").mkdir()
    ids: dict[str, str] = {}
    train = Task.init(project_name=EVIL_PROJECT, task_name=EVIL_TASK, output_uri=str(store_dir))
    weights = root / "w.bin"
    parent = OutputModel(name="parent")
    for it, content in ((1, b"version one"), (2, b"version two")):
        weights.write_bytes(content)
        parent.update_weights(str(weights), iteration=it, async_enable=False)
    ids["parent"] = parent.id
    for i in range(10):
        m = OutputModel(name=f"m{i}", tags=["ten"])
        m.set_metadata("seed", i, "int")
        m.set_metadata("dataset", "v1" if i < 5 else "v2")
        for it in range(3):
            m.report_scalar("loss", "val", 1.0 / (i + it + 1), it)
        m.report_single_value("acc", i / 10)
        m.report_scatter2d("pr", "curve", [[0, 1], [1, 0.5 + i / 100]], iteration=0,
                           extra_layout={"height": 333})
        ids[f"m{i}"] = m.id
    evil = OutputModel(name=EVIL_MODEL, tags=[EVIL_TASK])
    evil.set_metadata(EVIL_TASK, EVIL_PROJECT)
    evil.report_scalar(EVIL_TASK, EVIL_MODEL, 1.0, 0)
    ids["evil"] = evil.id
    ids["train"] = train.id
    train.flush(wait_for_uploads=True)
    train.close()
    consumer = Task.init(project_name="serving", task_name="consumer", output_uri=str(store_dir))
    InputModel(ids["parent"]).connect(consumer)
    child = OutputModel(task=consumer, name="child")
    ids["child"], ids["consumer"] = child.id, consumer.id
    store = consumer.store
    consumer.flush(wait_for_uploads=True)
    consumer.close()
    # a task that loaded version 1 (as a captured torch.load of that file records it)
    evaluator = Task.init(project_name="serving", task_name="evaluator", output_uri=str(store_dir))
    evaluator.wait_registered()
    v1 = next(x["id"] for x in store.catalog.snapshots_of(ids["parent"]) if x["version"] == 1)
    store.catalog.link_model(evaluator.id, ids["parent"], "input", snapshot_id=v1)
    evaluator.close()
    yield {"ids": ids, "store": store, "home": store_dir}
    env.undo()
    store.catalog.close()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated_home():
    """The module's store and HOME live across its tests (``reg`` sets and restores them)."""
    yield


@pytest.fixture(scope="module")
def server(reg):
    from clearml_hooks.ui import make_server

    srv = make_server(reg["store"], port=0).start()
    yield srv
    srv.stop()


def _shots_folder(tmp_path_factory) -> Path:
    shots = os.environ.get("CLEARML_HOOKS_UI_SCREENSHOTS")
    folder = Path(shots) if shots else tmp_path_factory.getbasetemp() / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(browser, server, tmp_path_factory, request):
    """A page that fails the test on a script error, a dialog (an XSS would open one) or any
    request to another origin (a CDN); ``page.shot(name)`` saves a screenshot."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
          and not re.match(r"Failed to load resource: .* status of 4\d\d", msg.text) else None)
    pg.on("dialog", lambda dialog: errors.append("dialog: " + dialog.message))
    origin = server.url.rstrip("/")
    pg.on("request", lambda r: errors.append("foreign request: " + r.url)
          if not (r.url.startswith(origin + "/") or r.url.startswith(("data:", "blob:")))
          else None)
    folder = _shots_folder(tmp_path_factory)
    pg.shot = lambda name: pg.screenshot(path=str(folder / f"{request.node.name}-{name}.png"),
                                         full_page=True)
    yield pg
    pg.shot("last")
    context.close()
    assert not errors, errors


def no_markup_injected(pg, where: str) -> None:
    """No element from a user string (plotly's own svg inside a ``.chart`` is not one)."""
    found = pg.evaluate(f"() => [...document.querySelectorAll({json.dumps(INJECTED)})]"
                        ".filter(e => !e.closest('.chart')).map(e => e.outerHTML)")
    assert found == [], where


# -- compare 10 models ------------------------------------------------------------------------------

def test_compare_ten_models(server, page, reg):
    ids = [reg["ids"][f"m{i}"] for i in range(10)]
    page.goto(server.url + "compare?ids=" + ",".join(ids))
    wait_drawn(page, 1 + 10)  # one overlaid scalar chart, ten plots
    page.shot("compare-10")
    assert page.text_content("h1") == "Compare 10 models"
    traces = page.evaluate("() => document.getElementById('compare-1').data.map(t => t.name)")
    assert len(traces) == 10 and all(t.endswith(": val") for t in traces)
    assert [t.split(" (")[0] for t in traces] == [f"m{i}" for i in range(10)]
    # hovering shows the values of every model at that iteration
    page.hover("#compare-1 .nsewdrag")
    page.wait_for_selector("#compare-1 .hoverlayer .legend")
    hover = page.text_content("#compare-1 .hoverlayer")
    assert all(f"m{i} (" in hover for i in range(10)) and "0.5" in hover, hover
    # every property row has one cell per model; differences are highlighted, equal rows not
    cells = page.eval_on_selector_all("#compare-props tbody tr", """rows => Object.fromEntries(
        rows.map(r => [r.querySelector('th').textContent,
                       [r.className, [...r.querySelectorAll('td')].map(c => c.textContent)]]))""")
    assert cells["metadata.seed"] == ["diff", [str(i) for i in range(10)]]
    assert cells["single value acc"][0] == "diff"
    assert [float(v) for v in cells["single value acc"][1]] == [i / 10 for i in range(10)]
    assert cells["project"] == ["same", [EVIL_PROJECT] * 10]
    assert cells["tags"][0] == "same"
    # plots: one row per plot, the ten models next to each other (same top for the first ones)
    boxes = page.eval_on_selector_all(".side .chart", "cs => cs.map(c => {"
                                      "const b = c.getBoundingClientRect(); return [b.x, b.y]})")
    assert len(boxes) == 10 and boxes[0][1] == boxes[1][1] and boxes[1][0] > boxes[0][0]
    # each drawn plot keeps the figure's own layout (extra_layout as reported)
    heights = page.evaluate("() => [...document.querySelectorAll('.side .chart')]"
                            ".map(d => d._fullLayout.height)")
    assert heights == [333] * 10
    # from the table: select ten rows, Compare
    page.goto(server.url + "?tag=ten&sort=name")
    for mid in ids:
        page.check(f'input.select[value="{mid}"]')
    page.click("#compare-selected")
    page.wait_for_url(re.compile(r"/compare\?ids="))
    assert page.text_content("h1") == "Compare 10 models"
    status, _, body = fetch(server.url + "api/v1/compare?ids=" + ",".join(ids))
    assert status == 200 and len(json.loads(body)["models"]) == 10


# -- lineage and versions ---------------------------------------------------------------------------

def test_lineage_graph_and_every_version_downloads(server, page, reg):
    ids = reg["ids"]
    page.goto(server.url + f"models/{ids['parent']}")
    page.shot("model-lineage")
    graph = page.locator("#lineage .graph")
    written = graph.locator(".node.task", has_text="written by")
    assert written.locator("a").text_content() == EVIL_TASK  # a hostile task name, as text
    assert graph.locator(".node.self").text_content().startswith("parent")
    loaded = graph.locator(".node.task", has_text="loaded by")
    assert loaded.locator("a").all_text_contents() == ["consumer", "evaluator"]
    assert loaded.locator("a").first.get_attribute("href") == f"/tasks/{ids['consumer']}"
    assert "version 1" in loaded.nth(1).text_content()  # which version it loaded
    assert "version" not in loaded.nth(0).text_content()  # connected, no file read: unknown
    child = graph.locator(".node.model", has_text="child model")
    assert child.locator("a").get_attribute("href") == f"/models/{ids['child']}"
    # the graph reads left to right: inputs, the model, outputs
    xs = [graph.locator(sel).first.bounding_box()["x"] for sel in
          (".node.task", ".node.self", ".node.model")]
    assert xs == sorted(xs) and xs[0] < xs[1] < xs[2]
    rows = page.locator("#versions tbody tr")
    assert rows.count() == 2
    for version, content in ((1, b"version one"), (2, b"version two")):
        with page.expect_download() as download:
            page.click(f'#versions a[href$="/versions/{version}/download"]')
        assert Path(download.value.path()).read_bytes() == content, version
    # the child's page shows its parent; the consumer's page lists what it loaded and wrote
    page.goto(server.url + f"models/{ids['child']}")
    parent = page.locator("#lineage .node.model", has_text="parent model")
    assert parent.locator("a").get_attribute("href") == f"/models/{ids['parent']}"
    page.goto(server.url + f"tasks/{ids['consumer']}")
    page.shot("task")
    tables = page.locator("main table")
    assert "child" in tables.nth(1).text_content() and "parent" in tables.nth(2).text_content()
    status, _, _ = fetch(server.url + f"models/{ids['parent']}/versions/9/download")
    assert status in (400, 404)


# -- batch actions ---------------------------------------------------------------------------------

def sdk_flags(reg, names: list[str]) -> dict:
    script = textwrap.dedent(f"""
        import json
        from clearml_hooks import Model
        ids = {json.dumps({n: reg["ids"][n] for n in names})}
        print(json.dumps({{n: {{"tags": Model(i).tags, "published": Model(i).published,
                                "archived": Model(i).archived}} for n, i in ids.items()}}))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLEARML_HOOKS_HOME": str(reg["home"])}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_batch_actions_round_trip_to_the_sdk(server, page, reg):
    picked, other = ["m7", "m8", "m9"], "m6"
    url = server.url + "?tag=ten&sort=name&columns=name,status,tags"

    def batch(action: str, names: list[str], tags: str = "", archived: bool = False,
              base: str = url) -> None:
        page.goto(base + ("&archived=1" if archived else ""))
        for n in names:
            page.check(f'input.select[value="{reg["ids"][n]}"]')
        if tags:
            page.fill('#batch input[name="tags"]', tags)
        page.click(f'#batch button[value="{action}"]')
        page.wait_for_load_state()
        assert page.locator("h1").text_content() == "Models", page.text_content("main")

    batch("publish", picked)
    assert column(page, "status")[7:] == ["published"] * 3
    batch("remove_tags", picked[:2], tags="ten")
    batch("archive", picked[2:])
    state = sdk_flags(reg, [*picked, other])
    assert all(state[n]["published"] for n in picked) and not state[other]["published"]
    assert state["m7"]["tags"] == state["m8"]["tags"] == [] and state["m9"]["tags"] == ["ten"]
    assert state["m9"]["archived"] and not state["m8"]["archived"]
    page.goto(url)
    assert "m9" not in column(page, "name")  # archived: hidden unless asked for
    batch("unarchive", ["m9"], archived=True)
    assert not sdk_flags(reg, ["m9"])["m9"]["archived"]
    batch("add_tags", ["m7", "m8"], tags="ten", base=server.url + "?sort=name&limit=100")
    assert sdk_flags(reg, ["m7"])["m7"]["tags"] == ["ten"]  # as before, for the other tests
    # nothing selected: a 400 page, nothing changed
    page.goto(url)
    page.click('#batch button[value="archive"]')
    assert page.locator("h1").text_content() == "Error 400"


# -- hostile strings on every page, no request leaves the server -------------------------------------

def test_hostile_names_are_text_on_every_page(server, page, reg):
    ids = reg["ids"]
    project = urllib.parse.quote(EVIL_PROJECT)
    pages = {
        "table": ("?columns=name,project,task,tags,metadata." + urllib.parse.quote(EVIL_TASK),
                  [EVIL_MODEL, EVIL_PROJECT, EVIL_TASK]),
        "table-project": ("?project=" + project, [EVIL_PROJECT]),
        "tasks": ("tasks", [EVIL_TASK, EVIL_PROJECT]),
        "task": (f"tasks/{ids['train']}", [EVIL_TASK, EVIL_PROJECT, EVIL_MODEL]),
        "model": (f"models/{ids['evil']}", [EVIL_MODEL, EVIL_TASK, EVIL_PROJECT]),
        "compare": (f"compare?ids={ids['evil']},{ids['m0']}", [EVIL_MODEL, EVIL_PROJECT]),
        "error-model": ("models/" + urllib.parse.quote(EVIL_ID), [EVIL_ID]),
        "error-table": ("?sort=" + urllib.parse.quote(EVIL_ID), [EVIL_ID]),
        "error-compare": ("compare?ids=" + ",".join(str(i) for i in range(21)), ["1 to 20"]),
    }
    for name, (path, expected) in pages.items():
        page.goto(server.url + path)
        if name in ("model", "compare"):
            wait_drawn(page, 1)
        page.shot(name)
        no_markup_injected(page, name)
        body = page.text_content("main")
        for text in expected:
            assert text in body, (name, text)
        # only the app's own files: scripts and styles are same-origin paths, no CDN
        sources = page.eval_on_selector_all("script[src], link[href]",
                                            "es => es.map(e => e.getAttribute('src') || "
                                            "e.getAttribute('href'))")
        assert all(s.startswith("/static/") for s in sources), (name, sources)
    # the project list names the hostile project as text, and its link filters by it
    page.goto(server.url)
    link = page.locator("aside.projects a", has_text=EVIL_PROJECT)
    link.click()
    page.wait_for_url(re.compile(r"project="))
    assert sorted(column(page, "name")) == sorted([EVIL_MODEL, "parent"] +
                                                  [f"m{i}" for i in range(10)])
    # inside plotly: the scalar chart's title and legend show the markup literally
    page.goto(server.url + f"models/{ids['evil']}")
    wait_drawn(page, 1)
    assert page.evaluate("() => [...document.querySelectorAll('.gtitle')]"
                         ".map(e => e.textContent)") == [EVIL_TASK]
    assert EVIL_MODEL in page.evaluate("() => [...document.querySelectorAll('.legendtext')]"
                                       ".map(e => e.textContent)")
    no_markup_injected(page, "model charts")


# -- the token of a server bound off loopback ---------------------------------------------------------

def _run_ui(reg, *args: str, env: dict | None = None) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if k != "CLEARML_HOOKS_UI_TOKEN"}
    full.update(PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "clearml_hooks", "ui", "--home",
                             str(reg["home"]), "--port", "0", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full, cwd=REPO)


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out + err


def test_cli_off_loopback_prints_and_requires_its_token(reg):
    proc = _run_ui(reg, "--host", "0.0.0.0")
    try:
        first, second = proc.stdout.readline(), proc.stdout.readline()
        port = re.search(r"http://0\.0\.0\.0:(\d+)/", first)
        assert port, first + second
        token = re.search(r"\?token=(\S+) once", second)
        assert token and "every request needs the access token" in second, second
        base, token = f"http://127.0.0.1:{port.group(1)}/", token.group(1)
        assert len(token) >= 24
        for path in ("", "api/v1/models", "tasks", "static/app.js"):
            assert fetch(base + path)[0] == 401, path
        assert fetch(base, headers={"Authorization": "Bearer " + token[:-1]})[0] == 401
        status, _, body = fetch(base, headers={"Authorization": "Bearer " + token})
        assert status == 200 and "parent" in body
        status, headers, _ = fetch(base + "?tag=ten&token=" + token + "&sort=name")
        assert status == 303 and "HttpOnly" in headers["set-cookie"]  # once: becomes a cookie
        assert headers["location"] == "/?tag=ten&sort=name"  # the rest of the link is kept
        cookie = headers["set-cookie"].split(";")[0]
        assert fetch(base + "tasks", headers={"Cookie": cookie})[0] == 200
        # off loopback any Host is answered (the token is the shield), a POST still needs Origin
        status, _, _ = fetch(base, headers={"Authorization": "Bearer " + token,
                                            "Host": "registry.example:8080"})
        assert status == 200
    finally:
        _stop(proc)
    # a token from the environment is required but not printed
    proc = _run_ui(reg, "--host", "0.0.0.0", env={"CLEARML_HOOKS_UI_TOKEN": "env-token-123"})
    try:
        first, second = proc.stdout.readline(), proc.stdout.readline()
        assert "env-token-123" not in first + second and "<your token>" in second, second
        port = re.search(r":(\d+)/", first).group(1)
        assert fetch(f"http://127.0.0.1:{port}/")[0] == 401
        assert fetch(f"http://127.0.0.1:{port}/",
                     headers={"Authorization": "Bearer env-token-123"})[0] == 200
    finally:
        _stop(proc)


# -- the same table over PostgreSQL --------------------------------------------------------------------

def test_table_over_postgresql(pg_server, tmp_path, monkeypatch):
    """The table's metadata and metric columns, sorted and filtered in SQL, through the server,
    on a store whose catalog is PostgreSQL."""
    import markupsafe
    import psycopg

    from clearml_hooks.config import Settings
    from clearml_hooks.store import Store, model_ops
    from clearml_hooks.store.model_metrics import add_scalar
    from clearml_hooks.ui import make_server

    name = "t" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    store = None
    try:
        url = pg_server.url.rsplit("/", 1)[0] + "/" + name
        store = Store(Settings(str(tmp_path / "home"), url, str(tmp_path / "blobs")))
        for model, loss, dataset, lr in (("a", [0.9, 0.5], "v2", 0.1), ("b", [0.8, 0.2], "v10", 0.001),
                                         ("c", [0.3, 0.7], "v1", 0.01), ("d", None, EVIL_TASK, None)):
            mid = model_ops.create_model(store.catalog, name=model, project="p", tags=[])
            entries = {"dataset": (dataset, "str")}
            if lr is not None:
                entries["lr"] = (str(lr), "float")
            model_ops.set_metadata(store.catalog, mid, entries, replace=False)
            for it, value in enumerate(loss or []):
                add_scalar(store.catalog, mid, "loss", "val", value, it)
        with make_server(store, port=0).start() as srv:
            def api(query: str) -> list:
                status, _, body = fetch(srv.url + "api/v1/models?" + query)
                assert status == 200, body
                return [(m["name"], m["columns"]) for m in json.loads(body)["models"]]

            cols = "columns=name,metadata.dataset,metadata.lr,metric.loss/val"
            got = api(cols + "&sort=-metric.loss/val")
            assert [n for n, _ in got] == ["c", "a", "b", "d"]
            assert [c["metric.loss/val"] for _, c in got] == [0.7, 0.5, 0.2, None]
            assert [n for n, _ in api(cols + "&sort=metric.loss/val")] == ["b", "a", "c", "d"]
            assert [n for n, _ in api(cols + "&sort=metadata.lr")] == ["b", "c", "a", "d"]
            assert [n for n, _ in api(cols + "&sort=-metadata.lr")] == ["a", "c", "b", "d"]
            assert [n for n, _ in api(cols + "&sort=metadata.dataset")] == ["d", "c", "b", "a"]
            assert sorted(n for n, _ in api(cols + "&where.metric.loss/val=%3C0.6")) == ["a", "b"]
            assert [n for n, _ in api(cols + "&where.metadata.lr=%3E0.005&sort=name")] == ["a", "c"]
            assert [n for n, _ in api(cols + "&where.metadata.dataset=~V1&sort=name")] == ["b", "c"]
            paged = [n for off in (0, 2) for n, _ in
                     api(cols + f"&sort=-metric.loss/val&limit=2&offset={off}")]
            assert paged == ["c", "a", "b", "d"]
            status, _, html = fetch(srv.url + "?" + cols + "&sort=-metric.loss/val")
            assert status == 200 and html.index(">c</a>") < html.index(">a</a>") < \
                html.index(">b</a>")
            assert EVIL_TASK not in html and str(markupsafe.escape(EVIL_TASK)) in html
    finally:
        if store is not None:
            store.catalog.close()
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_filter_form_and_column_chooser_keep_the_view_in_the_url(server, page, reg):
    """The filter form's free condition and the column chooser's choices end up in the URL, so
    reloading that URL (or sharing it) gives the same view; × removes one condition."""
    page.goto(server.url + "?tag=ten&sort=-metadata.seed&columns=name,metadata.seed")
    page.fill('#filters input[name="where_key"]', "metadata.seed")
    page.fill('#filters input[name="where_value"]', ">=7")
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r"where"))
    assert column(page, "name") == ["m9", "m8", "m7"]
    assert column(page, "metadata.seed") == ["9", "8", "7"]
    shared = page.url
    page.click("details.columns summary")
    page.uncheck('#columns-form input.col[value="metadata.seed"]')
    page.check('#columns-form input.col[value="metric.loss/val"]')  # offered: seen on the page
    page.click("#columns-apply")
    page.wait_for_url(re.compile(r"columns=name%2Cmetric\.loss%2Fval"))
    assert column(page, "name") == ["m9", "m8", "m7"]  # the filter and the sort survive
    assert [float(v) for v in column(page, "metric.loss/val")] == \
        pytest.approx([1 / 12, 1 / 11, 1 / 10], rel=1e-5)
    page.goto(shared)  # the shared link: the same rows
    assert column(page, "name") == ["m9", "m8", "m7"]
    page.click("p.conditions a[title=remove]")
    page.wait_for_load_state()
    assert len(column(page, "name")) == 10
