"""The web model table: a real server on 127.0.0.1 over a real SQLite store, fetched with urllib."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest
import torch

from clearml_hooks import Model, OutputModel, Task
from tests.conftest import REPO

EVIL = "<script>alert('x')</script>"


def fetch(url: str, headers: dict | None = None) -> tuple[int, dict, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def fetch_json(url: str) -> tuple[int, dict]:
    status, headers, body = fetch(url)
    assert headers["Content-Type"].startswith("application/json")
    return status, json.loads(body)


@pytest.fixture
def registry(store_dir, tmp_path):
    """Two tasks: 'train' saves a checkpoint twice (2 versions) and registers models by hand;
    'evaluate' (another project) loads the checkpoint."""
    ckpt = tmp_path / "ckpt.pt"
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"hand registered weights")
    train = Task.init(project_name="vision", task_name="train", output_uri=str(store_dir))
    for step in (10, 20):
        train.set_last_iteration(step)
        torch.save({"step": torch.tensor(step)}, ckpt)
    evil = OutputModel(name=EVIL, tags=["<b>bold</b>", "prod"], framework="pytorch",
                       label_enumeration={"<cat>": 1, "dog": 2}, config_dict={"lr": "<0.1>"})
    evil.update_weights(str(weights), iteration=7, async_enable=False)
    evil.set_metadata("dataset", "<mnist>")
    evil.publish()
    booster = OutputModel(name="booster", tags=["dev"], framework="xgboost")
    old = OutputModel(name="old-model", tags=["prod"])
    old.archive()
    train.flush(wait_for_uploads=True)
    (captured,) = [m for m in train.models["output"] if m.name == "ckpt.pt"]
    ids = {"ckpt": captured.id, "evil": evil.id, "booster": booster.id, "old": old.id,
           "train": train.id}
    train.close()
    evaluate = Task.init(project_name="eval", task_name="evaluate", output_uri=str(store_dir))
    torch.load(ckpt)
    evaluate.flush(wait_for_uploads=True)
    assert [m.id for m in evaluate.models["input"]] == [ids["ckpt"]]
    ids["evaluate"] = evaluate.id
    evaluate.close()
    return ids


@pytest.fixture
def server(store_dir, registry):
    from clearml_hooks.ui import make_server

    srv = make_server(home=str(store_dir), port=0).start()
    yield srv
    srv.stop()


def names_in_table(body: str) -> list[str]:
    return re.findall(r'<tr><td><a href="/models/[0-9a-f]+">(.*?)</a>', body)


def test_model_table_columns_and_filters(server, registry):
    status, headers, body = fetch(server.url)
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    # newest first; the archived model is hidden by default
    assert set(names_in_table(body)) == {"ckpt.pt", "booster", "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"}
    ckpt_id = registry["ckpt"]
    ckpt_row = re.search(rf'<tr><td><a href="/models/{ckpt_id}">.*?</tr>', body).group(0)
    for text in ("vision", "PyTorch", ">20<", ">2<", ">train</a>", "draft"):
        assert text in ckpt_row  # project, framework, iteration, versions, task, state
    assert f'href="/tasks/{registry["train"]}"' in ckpt_row

    def names(query: str) -> set[str]:
        status, _, page = fetch(server.url + "?" + query)
        assert status == 200, page
        return set(names_in_table(page))

    assert names("project=vision") == names("") and names("project=eval") == set()
    assert names("tag=dev") == {"booster"}
    assert names("tag=prod&archived=1") == {"old-model", "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"}
    assert names("tag=-prod") == {"ckpt.pt", "booster"}
    assert names("framework=xgboost") == {"booster"}
    assert names("published=1") == {"&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"}
    assert names("name=booster") == {"booster"}
    assert "old-model" in names("archived=1")
    assert names("sort=name&archived=1") == names("archived=1")
    # the filters survive in the form
    _, _, page = fetch(server.url + "?project=vision&tag=prod&published=1")
    assert 'name="project" value="vision"' in page and 'name="tag" value="prod"' in page
    assert 'name="published" value="1" checked' in page


def test_paging(server):
    seen = []
    url = server.url + "?limit=1&archived=1&sort=name"
    for _ in range(5):
        status, _, page = fetch(url)
        assert status == 200
        seen += names_in_table(page)
        nxt = re.search(r'<a rel="next" href="([^"]+)"', page)
        if not nxt:
            break
        url = server.url.rstrip("/") + nxt.group(1).replace("&amp;", "&")
    assert seen == sorted(seen) and len(seen) == 4 and "old-model" in seen
    status, page = fetch_json(server.url + "api/models?limit=2&offset=0")
    assert status == 200 and len(page["models"]) == 2 and page["next_offset"] == 2
    status, rest = fetch_json(server.url + "api/models?limit=2&offset=2")
    assert len(rest["models"]) == 1 and rest["next_offset"] is None
    assert {m["id"] for m in page["models"]}.isdisjoint(m["id"] for m in rest["models"])


def test_user_text_is_escaped(server, registry):
    for path in ("", f"models/{registry['evil']}", f"tasks/{registry['train']}",
                 "?name=" + urllib.request.quote(EVIL)):
        status, headers, body = fetch(server.url + path)
        assert status == 200, path
        assert "<script" not in body and "<b>bold" not in body and "<cat>" not in body
        assert "&lt;script&gt;" in body
        assert "script-src" not in headers["Content-Security-Policy"]
        assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    _, _, detail = fetch(server.url + f"models/{registry['evil']}")
    assert "&lt;b&gt;bold&lt;/b&gt;" in detail and "&lt;cat&gt;" in detail
    assert "&lt;mnist&gt;" in detail and "&lt;0.1&gt;" in detail
    # an id made of markup is a 404 that does not echo it raw
    status, _, body = fetch(server.url + "models/" + urllib.request.quote(EVIL, safe=""))
    assert status == 404 and "<script" not in body and "&lt;script&gt;" in body
    # the JSON API returns the name as data
    _, info = fetch_json(server.url + f"api/models/{registry['evil']}")
    assert info["name"] == EVIL and info["tags"] == ["<b>bold</b>", "prod"]


def test_model_detail_versions_and_lineage(server, registry):
    ckpt = Model(registry["ckpt"], store=server.store)
    snaps = ckpt.snapshots
    assert [s["iteration"] for s in snaps] == [10, 20]
    status, _, page = fetch(server.url + f"models/{registry['ckpt']}")
    assert status == 200
    assert "<h1>Model ckpt.pt</h1>" in page
    for snap in snaps:  # every version with its digest, size and state
        assert f'title="{snap["digest"]}"' in page and f'title="{snap["size"]} bytes"' in page
    assert page.count('<span class="badge pub">ready</span>') == 2
    assert page.count('<span class="badge pub">latest</span>') == 1
    versions = re.findall(r'<tr><td class="num">(\d)(?: <span class="badge pub">latest</span>)?'
                          r'</td><td class="num">(\d+)</td>', page)
    assert versions == [("2", "20"), ("1", "10")]
    # lineage: the task that wrote it, the task that loaded it (and which version)
    train_id, eval_id = registry["train"], registry["evaluate"]
    assert re.search(rf'<td>written by</td><td><a href="/tasks/{train_id}">train</a></td>'
                     r"<td>vision</td>", page)
    assert re.search(rf'<td>loaded by</td><td><a href="/tasks/{eval_id}">evaluate</a></td>'
                     r'<td>eval</td><td>[a-z_]+</td><td class="num">2</td>', page)
    # and the same as JSON
    status, info = fetch_json(server.url + f"api/models/{registry['ckpt']}")
    assert status == 200 and info["versions"] == 2 and info["iteration"] == 20
    assert [(v["version"], v["iteration"], v["digest"], v["size"], v["state"])
            for v in info["versions_detail"]] == [
        (s["version"], s["iteration"], s["digest"], s["size"], "ready") for s in snaps]
    assert info["lineage"]["written_by"]["id"] == registry["train"]
    assert [t["task"] for t in info["lineage"]["loaded_by"]] == [registry["evaluate"]]
    assert info["lineage"]["loaded_by"][0]["version"] == 2
    # the task pages close the loop
    _, _, task_page = fetch(server.url + f"tasks/{registry['evaluate']}")
    loaded = task_page.split("<h2>Models loaded</h2>")[1]
    assert f'href="/models/{registry["ckpt"]}">ckpt.pt</a>' in loaded


def test_model_detail_properties(server, registry):
    _, _, page = fetch(server.url + f"models/{registry['evil']}")
    assert '<span class="badge pub">published</span>' in page
    assert "<th>framework</th><td>PyTorch</td>" in page and "<th>iteration</th><td>7</td>" in page
    assert "<td>dataset</td><td>&lt;mnist&gt;</td>" in page
    _, info = fetch_json(server.url + f"api/models/{registry['evil']}")
    assert info["published"] and info["labels"] == {"<cat>": 1, "dog": 2}
    assert info["metadata"]["dataset"]["value"] == "<mnist>"
    assert info["config_dict"] == {"lr": "<0.1>"}
    _, old = fetch_json(server.url + f"api/models/{registry['old']}")
    assert old["archived"] and old["versions"] == 0 and old["versions_detail"] == []


def test_json_api(server, registry):
    status, page = fetch_json(server.url + "api/models")
    assert status == 200 and page["offset"] == 0 and page["limit"] == 50
    assert {m["id"] for m in page["models"]} == {registry[k] for k in ("ckpt", "evil", "booster")}
    ckpt = next(m for m in page["models"] if m["id"] == registry["ckpt"])
    assert ckpt["project"] == "vision" and ckpt["versions"] == 2 and ckpt["task"] == registry["train"]
    assert ckpt["task_name"] == "train" and ckpt["framework"] == "PyTorch"
    _, page = fetch_json(server.url + "api/models?project=vision&tag=prod")
    assert [m["id"] for m in page["models"]] == [registry["evil"]]
    _, page = fetch_json(server.url + "api/models?tag=prod&archived=1&limit=1&offset=1")
    assert len(page["models"]) == 1 and page["next_offset"] is None
    status, tasks = fetch_json(server.url + "api/tasks")
    assert status == 200
    by_name = {t["name"]: t for t in tasks["tasks"]}
    assert by_name["train"]["output_models"] == 4 and by_name["evaluate"]["input_models"] == 1
    assert [t["name"] for t in tasks["tasks"]] == ["evaluate", "train"]  # newest first
    _, tasks = fetch_json(server.url + "api/tasks?project=eval")
    assert [t["id"] for t in tasks["tasks"]] == [registry["evaluate"]]
    _, task = fetch_json(server.url + f"api/tasks/{registry['train']}")
    assert {m["name"] for m in task["output_models"]} == {"ckpt.pt", EVIL, "booster", "old-model"}
    assert task["input_models"] == []
    status, _, page = fetch(server.url + "tasks")
    assert status == 200 and f'href="/tasks/{registry["evaluate"]}">evaluate</a>' in page


def test_errors(server):
    status, headers, body = fetch(server.url + "models/0123456789abcdef")
    assert status == 404 and headers["Content-Type"].startswith("text/html")
    assert "no model with id" in body
    status, info = fetch_json(server.url + "api/models/0123456789abcdef")
    assert status == 404 and info == {"error": "no model with id '0123456789abcdef'", "status": 404}
    assert fetch_json(server.url + "api/tasks/nope")[0] == 404
    assert fetch(server.url + "tasks/nope")[0] == 404
    assert fetch(server.url + "no/such/page")[0] == 404
    status, info = fetch_json(server.url + "api/models?limit=abc")
    assert status == 400 and "limit" in info["error"]
    assert fetch_json(server.url + "api/models?limit=0")[0] == 400
    assert fetch_json(server.url + "api/models?sort=size")[0] == 400
    assert fetch(server.url + "?offset=-1")[0] == 400
    # read-only: no other method
    request = urllib.request.Request(server.url + "api/models", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 501


def test_head_and_headers(server):
    request = urllib.request.Request(server.url, method="HEAD")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200 and response.read() == b""
        assert int(response.headers["Content-Length"]) > 0
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_loopback_server_refuses_other_host_names(server):
    """DNS rebinding: a page on evil.example must not read the registry through the browser."""
    status, _, _ = fetch(server.url, headers={"Host": f"evil.example:{server.server_port}"})
    assert status == 421
    assert fetch(server.url, headers={"Host": f"localhost:{server.server_port}"})[0] == 200


def test_server_stops_cleanly(store_dir, registry):
    from clearml_hooks.ui import make_server

    srv = make_server(home=str(store_dir), host="127.0.0.1", port=0)
    assert srv.server_address[0] == "127.0.0.1"
    srv.start()
    thread = srv._thread
    assert fetch(srv.url)[0] == 200
    url = srv.url
    srv.stop()
    assert not thread.is_alive()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)


def test_cli_ui_command_serves_and_stops_on_ctrl_c(store_dir, registry):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "clearml_hooks", "ui", "--home", str(store_dir), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert match, line + proc.stderr.read()
        status, _, body = fetch(match.group(1))
        assert status == 200 and "ckpt.pt" in body
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "GET / " in err  # the access log


def test_cli_ui_port_in_use(store_dir, server):
    from click.testing import CliRunner

    from clearml_hooks.cli import cli

    result = CliRunner().invoke(cli, ["ui", "--home", str(store_dir), "--port",
                                      str(server.server_port)], obj={})
    assert result.exit_code == 2 and "cannot listen on 127.0.0.1" in result.output


def test_ui_imports_no_ml_framework(store_dir, registry):
    script = textwrap.dedent(f"""
        import sys, urllib.request
        from clearml_hooks.ui import make_server
        srv = make_server(home={str(store_dir)!r}, port=0).start()
        for path in ("", "models/{registry['ckpt']}", "api/models", "api/models/{registry['ckpt']}",
                     "tasks", "api/tasks", "tasks/{registry['train']}"):
            assert urllib.request.urlopen(srv.url + path, timeout=30).status == 200
        srv.stop()
        heavy = {{"torch", "tensorflow", "keras", "sklearn", "xgboost", "catboost", "lightgbm",
                  "fastai", "megengine", "lightning", "joblib", "numpy"}}
        loaded = sorted(heavy & set(sys.modules))
        assert not loaded, loaded
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr

