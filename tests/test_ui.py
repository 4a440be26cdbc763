"""The web model registry: a real uvicorn server on 127.0.0.1 over a real store, driven by a real
browser (Playwright on Debian's chromium) and by plain HTTP for what a browser would not send.

Screenshots of every page go to ``$CLEARML_HOOKS_UI_SCREENSHOTS`` when set, else to pytest's
temporary folder.
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
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from clearml_hooks import Model, OutputModel, Task
from clearml_hooks.store.model_metrics import add_plot
from tests.conftest import REPO

EVIL = "<script>alert('x')</script>"
EVIL_B = "<b>bold</b>"


def fetch(url: str, *, data: bytes | None = None, headers: dict | None = None,
          method: str | None = None) -> tuple[int, dict, str]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Models with metadata, scalars, plots, lineage and hostile strings, made with the SDK."""
    root = tmp_path_factory.mktemp("ui-store")
    store_dir = root / "store"
    env = pytest.MonkeyPatch()  # conftest's per-test isolation, for the whole module
    for name, sub in (("HOME", "home"), ("XDG_CACHE_HOME", "home/.cache"),
                      ("XDG_CONFIG_HOME", "home/.config"), ("MPLCONFIGDIR", "home/.mpl")):
        env.setenv(name, str(root / sub))
    env.setenv("CLEARML_HOOKS_HOME", str(store_dir))
    (root / "home").mkdir()
    train = Task.init(project_name="vision", task_name="train", output_uri=str(store_dir))
    weights = root / "w.bin"
    weights.write_bytes(b"weights v1")
    ids = {}
    for i, (name, dataset, loss) in enumerate([("alpha", "v2", 0.5), ("beta", "v10", 0.2),
                                               ("gamma", "v1", 0.9), (EVIL, EVIL_B, 0.7)]):
        m = OutputModel(name=name, tags=["sweep", EVIL_B] if name == EVIL else ["sweep"],
                        framework="pytorch", label_enumeration={"<cat>": 1, "dog": 2},
                        config_dict={"lr": "<0.1>"})
        m.set_metadata("dataset", dataset)
        m.set_metadata("lr", 10.0 ** -(i + 1))
        for it in range(5):
            m.report_scalar("loss", "val", loss + (4 - it) * 0.1, it)
            m.report_scalar("loss", EVIL_B if name == EVIL else "train", loss * 2, it)
            m.report_scalar("acc", "val", 1 - loss, it)
        m.report_single_value("mAP", 1 - loss)
        m.report_histogram(EVIL if name == EVIL else "hist", "counts", [1, 2, 3],
                           xlabels=["a", EVIL_B, "c"] if name == EVIL else ["a", "b", "c"])
        m.report_confusion_matrix("cm", "val", [[5, 1], [2, 7]], xlabels=["cat", "dog"],
                                  ylabels=["cat", "dog"])
        ids[name] = m.id
    ckpt = OutputModel(name="weights", tags=["prod"])
    ckpt.update_weights(str(weights), iteration=7, async_enable=False)
    ids["weights"] = ckpt.id
    # a plot as release 0.1 stored it (plain data, not a figure): still drawn
    add_plot(train.store.catalog, ids["alpha"], "old", "plain", 0, "histogram",
             {"values": [[1, 2], [3, 4]], "labels": ["x", "y"], "xlabels": None, "xaxis": None,
              "yaxis": None, "mode": "group", "data_args": None, "extra_layout": None})
    ids["train"] = train.id
    train.flush(wait_for_uploads=True)
    store = train.store
    train.close()
    yield {"ids": ids, "store": store, "home": store_dir}
    env.undo()
    store.catalog.close()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated_home():
    """Replaces conftest's per-test isolation: this module's store and HOME live across its
    tests (the ``registry`` fixture sets and restores them)."""
    yield


@pytest.fixture(scope="module")
def server(registry):
    from clearml_hooks.ui import make_server

    srv = make_server(registry["store"], port=0).start()
    yield srv
    srv.stop()


@pytest.fixture
def page(browser, tmp_path_factory, request):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and not
          re.match(r"Failed to load resource: .* status of 4\d\d", msg.text) else None)
    pg.on("dialog", lambda dialog: errors.append("dialog: " + dialog.message))  # an XSS would
    yield pg
    shots = os.environ.get("CLEARML_HOOKS_UI_SCREENSHOTS")
    folder = Path(shots) if shots else tmp_path_factory.getbasetemp() / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(folder / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, errors


def wait_drawn(pg, count: int) -> None:
    pg.wait_for_function(f"document.querySelectorAll('[data-drawn]').length >= {count}",
                         timeout=20000)


def column(pg, key: str) -> list[str]:
    return pg.eval_on_selector_all(f'#model-table tbody td[data-column="{key}"]',
                                   "cells => cells.map(c => c.textContent.trim())")


# -- the model table ---------------------------------------------------------------------------------

def test_table_metadata_and_metric_columns_sorted_and_filtered(server, page):
    url = (server.url + "?columns=name,metadata.dataset,metadata.lr,metric.loss/val"
           "&sort=-metric.loss/val")
    page.goto(url)
    names = column(page, "name")
    assert names == ["gamma", EVIL, "alpha", "beta", "weights"]  # no metric: last, both ways
    values = [float(v) for v in column(page, "metric.loss/val")[:4]]
    assert values == sorted(values, reverse=True)
    # clicking the header flips the direction, and the URL carries the state
    page.click('th a[data-column="metric.loss/val"]')
    page.wait_for_url(re.compile(r"sort=metric\.loss%2Fval"))
    values = [float(v) for v in column(page, "metric.loss/val")[:4]]
    assert values == sorted(values) and column(page, "name")[-1] == "weights"
    # metadata: typed (floats as numbers), and text; hostile values are text
    page.goto(server.url + "?columns=name,metadata.lr,metadata.dataset&sort=metadata.lr")
    assert column(page, "name")[:4] == [EVIL, "gamma", "beta", "alpha"]
    assert EVIL_B in column(page, "metadata.dataset")
    # filter on a metric column, server side
    page.goto(server.url + "?columns=name,metric.loss/val&where.metric.loss/val=%3C0.6")
    assert sorted(column(page, "name")) == ["alpha", "beta"]
    assert "2 models" in page.text_content("p.summary")
    # the column chooser adds a column to the URL
    page.goto(server.url)
    page.click("details.columns summary")
    page.fill("#column-add", "metric.acc/val")
    page.click("#columns-apply")
    page.wait_for_url(re.compile(r"columns=.*metric\.acc%2Fval"))
    assert len([v for v in column(page, "metric.acc/val") if v]) == 4


def test_table_projects_paging_and_batch_actions(server, page, registry):
    page.goto(server.url + "?limit=2&sort=name")
    first = column(page, "name")
    page.click('a[rel="next"]')
    second = column(page, "name")
    assert len(first) == 2 and not set(first) & set(second)
    page.goto(server.url + "?project=vision&tag=sweep&sort=name")
    assert column(page, "name") == [EVIL, "alpha", "beta", "gamma"]
    # batch: tag two models, then compare them
    page.check(f'input.select[value="{registry["ids"]["alpha"]}"]')
    page.check(f'input.select[value="{registry["ids"]["beta"]}"]')
    page.fill('#batch input[name="tags"]', "batch-tag")
    page.click('#batch button[value="add_tags"]')
    page.wait_for_load_state()
    assert page.url.startswith(server.url + "?"), page.text_content("main")
    out = sdk_state(registry, ["alpha", "beta", "gamma"])
    assert "batch-tag" in out["alpha"]["tags"] and "batch-tag" in out["beta"]["tags"]
    assert "batch-tag" not in out["gamma"]["tags"]


# -- the model page ------------------------------------------------------------------------------------

def test_model_page_draws_scalars_and_plots(server, page, registry):
    page.goto(server.url + f"models/{registry['ids']['alpha']}")
    wait_drawn(page, 5)  # 2 scalar charts (acc, loss) + 3 plots (hist, cm, old plain data)
    traces = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('.chart')]
        .map(d => [d.id, d.data.length]))""")
    assert traces["scalar-1"] == 1 and traces["scalar-2"] == 2  # acc: val; loss: train, val
    assert len([k for k in traces if k.startswith("plot-")]) == 3
    old = page.evaluate("""() => [...document.querySelectorAll('.chart')].filter(d =>
        d.data.length == 2 && d.data[0].type == 'bar').length""")
    assert old == 1  # the 0.1 plain-data histogram, migrated on read
    assert page.locator(".chart .main-svg").count() >= 5
    assert "mAP" in page.text_content("table.singles")
    for section in ("General", "Network", "Labels", "Metadata", "Lineage", "Versions",
                    "Scalars", "Plots"):
        assert page.locator(f"section h2:text-is('{section}')").count() == 1
    assert json.loads(page.text_content("#network pre")) == {"lr": "<0.1>"}  # the design
    labels = page.eval_on_selector_all("#labels tbody tr", "rs => rs.map(r => r.innerText)")
    assert labels == ["<cat>\t1", "dog\t2"]
    rows = page.eval_on_selector_all("#metadata tbody tr", "rs => rs.map(r => [...r.cells]"
                                     ".slice(0, 3).map(c => c.textContent))")
    assert rows == [["dataset", "v2", "str"], ["lr", "0.1", "float"]]


def test_model_page_versions_and_lineage(server, page, registry):
    page.goto(server.url + f"models/{registry['ids']['weights']}")
    assert "written by" in page.text_content("#lineage")
    assert page.locator("#lineage a", has_text="train").count() == 1
    with page.expect_download() as download:
        page.click("#versions a:text('Download')")
    assert Path(download.value.path()).read_bytes() == b"weights v1"


def test_hostile_strings_render_as_text_everywhere(server, page, registry):
    evil_id = registry["ids"][EVIL]
    pages = ["", "?columns=name,tags,metadata.dataset", f"models/{evil_id}",
             f"compare?ids={evil_id},{registry['ids']['alpha']}", f"tasks/{registry['ids']['train']}",
             "?name=" + urllib.request.quote(EVIL)]
    for path in pages:
        page.goto(server.url + path)
        if "models/" in path or "compare" in path:
            wait_drawn(page, 2)
        assert page.evaluate("() => document.querySelectorAll('main script:not(.figure), main b')"
                             ".length") == 0, path
        body = page.text_content("main")
        assert EVIL in body or "compare" in path, path
        # plotly got escaped text: the legend and titles show the markup literally
        if "models/" in path:
            legend = page.evaluate("() => [...document.querySelectorAll('.legendtext')]"
                                   ".map(e => e.textContent)")
            assert EVIL_B in legend
            titles = page.evaluate("() => [...document.querySelectorAll('.gtitle')]"
                                   ".map(e => e.textContent)")
            assert EVIL in titles
    status, headers, _ = fetch(server.url + f"models/{evil_id}")
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"].split("script-src")[1] \
        .split(";")[0]


# -- compare ---------------------------------------------------------------------------------------

def test_compare_overlays_scalars_and_highlights_differences(server, page, registry):
    ids = [registry["ids"][n] for n in ("alpha", "beta", "gamma")]
    page.goto(server.url + "compare?ids=" + ",".join(ids))
    wait_drawn(page, 2 + 2 * 3)
    traces = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('.chart')]
        .filter(d => d.id.startsWith('compare-')).map(d => [d.id, d.data.length]))""")
    assert traces == {"compare-1": 3, "compare-2": 6}  # acc: 1 series x 3; loss: 2 x 3
    diff = page.eval_on_selector_all("#compare-props tr.diff th", "e => e.map(x => x.textContent)")
    assert "metadata.dataset" in diff and "name" in diff and "project" not in diff
    assert "single value mAP" in diff


# -- edits -----------------------------------------------------------------------------------------

def sdk_state(registry, names: list[str]) -> dict:
    """The models as the SDK in another process sees them."""
    script = textwrap.dedent(f"""
        import json
        from clearml_hooks import Model
        ids = {json.dumps({n: registry["ids"][n] for n in names})}
        out = {{}}
        for name, i in ids.items():
            m = Model(i)
            out[name] = {{"name": m.name, "tags": m.tags, "published": m.published,
                          "archived": m.archived, "comment": m.comment, "labels": m.labels,
                          "metadata": m.get_all_metadata_casted()}}
        print(json.dumps(out))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLEARML_HOOKS_HOME": str(registry["home"])}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_edits_round_trip_to_the_sdk(server, page, registry):
    """Every edit on the model page, then the SDK in another process sees them all. (The model
    without charts: each page load then skips parsing plotly.js.)"""
    mid = registry["ids"]["weights"]
    page.goto(server.url + f"models/{mid}")
    page.fill('form[action$="/rename"] input[name="name"]', "weights-renamed")
    page.click("button:text('Rename')")
    page.fill('textarea[name="comment"]', "best so far")
    page.click("button:text('Save comment')")
    page.fill('form[action$="/add_tags"] input[name="tags"]', "candidate, <i>new</i>")
    page.click("button:text('Add tags')")
    page.fill('form[action$="/remove_tags"] input[name="tags"]', "prod")
    page.click("button:text('Remove tags')")
    for key, value, v_type in (("epochs", "12", "int"), ("tmp", "x", "str"),
                               ("epochs", "12.5", "float")):  # add, add, edit (a new type)
        page.fill('#metadata-form input[name="key"]', key)
        page.fill('#metadata-form input[name="value"]', value)
        page.select_option('#metadata-form select[name="type"]', v_type)
        page.click("button:text('Set metadata')")
    page.click('form[action$="/delete_metadata"]:has(input[value="tmp"]) button')
    page.fill('textarea[name="labels"]', '{"cat": 0, "dog": 1}')
    page.click("button:text('Save labels')")
    page.click("button:text('Publish')")
    page.click("button:text('Archive')")
    page.wait_for_selector("button:text('Unarchive')")
    assert page.locator("p .tag", has_text="<i>new</i>").count() == 1  # a tag, as text
    state = sdk_state(registry, ["weights"])["weights"]
    assert state["name"] == "weights-renamed" and state["comment"] == "best so far"
    assert state["tags"] == ["candidate", "<i>new</i>"]
    assert state["published"] and state["archived"]
    assert state["labels"] == {"cat": 0, "dog": 1}
    assert state["metadata"] == {"epochs": {"key": "epochs", "value": 12.5, "type": "float"}}
    page.click("button:text('Unarchive')")
    page.wait_for_selector("button:text('Archive')")
    # a value that is not of its type: a 400 page, nothing stored
    page.fill('#metadata-form input[name="key"]', "epochs")
    page.fill('#metadata-form input[name="value"]', "twelve")
    page.select_option('#metadata-form select[name="type"]', "int")
    page.click("button:text('Set metadata')")
    assert page.locator("h1").text_content() == "Error 400"
    state = sdk_state(registry, ["weights"])["weights"]
    assert not state["archived"] and state["metadata"]["epochs"]["value"] == 12.5


# -- security ----------------------------------------------------------------------------------------

def test_forged_cross_site_post_is_refused(server, registry):
    mid = registry["ids"]["beta"]
    url = server.url + f"models/{mid}/actions/publish"
    own = server.url.rstrip("/")
    _, _, page_html = fetch(server.url + f"models/{mid}")
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page_html).group(1)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for origin, body in (("http://evil.example", f"csrf={csrf}"), (None, f"csrf={csrf}"),
                         (own, "csrf=forged"), (own, "")):
        headers = dict(form, **({"Origin": origin} if origin else {}))
        status, _, _ = fetch(url, data=body.encode(), headers=headers)
        assert status == 403, (origin, body)
    model = Model(mid, store=registry["store"])
    assert not model.published
    status, headers, _ = fetch(url, data=f"csrf={csrf}".encode(), headers=dict(form, Origin=own))
    assert status == 303 and headers["location"] == f"/models/{mid}"
    assert model.published


def test_read_only_server_refuses_edits(registry):
    from clearml_hooks.ui import make_server

    with make_server(registry["store"], port=0, read_only=True).start() as srv:
        _, _, html = fetch(srv.url + f"models/{registry['ids']['alpha']}")
        assert "Publish" not in html and "Rename" not in html
        _, _, html = fetch(srv.url)
        assert 'value="publish"' not in html and 'value="add_tags"' not in html  # no batch
        status, _, _ = fetch(srv.url + "actions/batch", data=b"action=publish",
                             headers={"Origin": srv.url.rstrip("/")})
        assert status == 403
        status, _, _ = fetch(srv.url + f"models/{registry['ids']['alpha']}/actions/publish",
                             data=b"csrf=x", headers={"Origin": srv.url.rstrip("/")})
        assert status == 403


def test_foreign_host_is_refused(server):
    """DNS rebinding: a page on evil.example must not read the registry through the browser."""
    port = server.server_port
    assert fetch(server.url, headers={"Host": f"evil.example:{port}"})[0] == 421
    status, _, body = fetch(server.url + "api/v1/models", headers={"Host": f"evil.example:{port}"})
    assert status == 421 and json.loads(body)["status"] == 421
    assert fetch(server.url, headers={"Host": f"localhost:{port}"})[0] == 200


def test_token_required_off_loopback(registry, browser):
    from clearml_hooks.ui import UiServer

    exposed = UiServer(registry["store"], "0.0.0.0", 0)  # bound, never started: nothing served
    try:
        assert exposed.token_generated and len(exposed.guard.token) >= 24
        assert not exposed.guard.loopback_only
    finally:
        exposed.stop()
    with UiServer(registry["store"], "127.0.0.1", 0, token="s3cret-token").start() as srv:
        assert fetch(srv.url)[0] == 401
        assert fetch(srv.url + "api/v1/models")[0] == 401
        assert fetch(srv.url, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert fetch(srv.url, headers={"Authorization": "Bearer s3cret-token"})[0] == 200
        context = browser.new_context()
        pg = context.new_page()
        pg.goto(srv.url + "?token=s3cret-token")  # sets the cookie, drops the token from the URL
        assert pg.url == srv.url and pg.locator("h1").text_content() == "Models"
        pg.goto(srv.url + "tasks")
        assert pg.locator("h1").text_content() == "Tasks"
        context.close()


# -- the JSON API ----------------------------------------------------------------------------------

def test_json_api(server, registry):
    status, _, body = fetch(server.url + "api/v1/models?columns=name,metric.loss/val,"
                            "metadata.dataset&sort=metric.loss/val&limit=2")
    page1 = json.loads(body)
    assert status == 200 and page1["total"] == 5 and page1["next_offset"] == 2
    assert [m["columns"]["metric.loss/val"] for m in page1["models"]] == [0.2, 0.5]
    assert page1["models"][0]["columns"]["metadata.dataset"] == "v10"
    _, _, body = fetch(server.url + f"api/v1/models/{registry['ids'][EVIL]}")
    info = json.loads(body)
    assert info["name"] == EVIL and info["labels"] == {"<cat>": 1, "dog": 2}
    _, _, body = fetch(server.url + f"api/v1/models/{registry['ids']['alpha']}/scalars")
    scalars = json.loads(body)
    assert scalars["scalars"]["loss"]["val"]["x"] == [0, 1, 2, 3, 4]
    assert scalars["single_values"] == {"mAP": 0.5}
    _, _, body = fetch(server.url + f"api/v1/models/{registry['ids']['alpha']}/plots")
    plots = json.loads(body)["plots"]
    assert {p["metric"] for p in plots} == {"hist", "cm", "old"}
    assert all(json.loads(p["plot_str"])["data"] for p in plots)
    ids = ",".join(registry["ids"][n] for n in ("alpha", "beta"))
    _, _, body = fetch(server.url + f"api/v1/compare?ids={ids}")
    assert [m["name"] for m in json.loads(body)["models"]] == ["alpha", "beta"]
    _, _, body = fetch(server.url + "api/v1/tasks")
    assert [t["name"] for t in json.loads(body)["tasks"]] == ["train"]
    for path, status in (("api/v1/models/nope", 404), ("api/v1/models?sort=size", 400),
                         ("api/v1/models?limit=abc", 400), ("api/v1/models?where.metric.x=<a", 400),
                         ("api/v1/tasks/nope", 404), ("api/v1/compare?ids=", 400),
                         ("api/v1/nothing", 404)):
        got, headers, body = fetch(server.url + path)
        assert got == status and headers["content-type"] == "application/json", path
        assert json.loads(body)["status"] == status
    for path in ("api/v1/models/nope", "api/v1/models/nope/scalars", "models/nope"):
        got, _, body = fetch(server.url + path)  # says what is missing, not where the store is
        assert got == 404 and "nope" in body, path
        assert str(registry["store"].home) not in body, path
    own = {"Origin": server.url.rstrip("/")}
    for method in ("POST", "DELETE", "PUT"):  # the API is read-only: JSON errors here too
        got, headers, body = fetch(server.url + "api/v1/models", data=b"", headers=own,
                                   method=method)
        assert got == 405 and json.loads(body)["status"] == 405, method
    assert "endpoints" in json.loads(fetch(server.url + "api/v1")[2])


def test_plotly_is_served_by_the_app(server):
    status, headers, body = fetch(server.url + "static/plotly.min.js")
    assert status == 200 and len(body) > 1_000_000 and "max-age" in headers["cache-control"]


# -- the command and the import boundary -------------------------------------------------------------

def test_cli_ui_serves_and_stops_on_ctrl_c(registry):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "clearml_hooks", "ui", "--home", str(registry["home"]), "--port",
         "0", "--read-only"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        cwd=REPO)
    try:
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/) \(read-only\)", line)
        assert match, line + proc.stderr.read()
        status, _, body = fetch(match.group(1))
        assert status == 200 and "alpha" in body
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "GET / " in out + err  # the access log


def test_task_init_imports_no_web_stack(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from clearml_hooks import Task
        task = Task.init(project_name="p", task_name="t", output_uri={str(tmp_path / 's')!r})
        task.close()
        heavy = {{"starlette", "uvicorn", "jinja2", "plotly", "clearml_hooks.ui"}}
        print(sorted(heavy & set(sys.modules)))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
