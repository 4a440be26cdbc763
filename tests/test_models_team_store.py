"""The registry API on a team store: PostgreSQL catalog + S3-compatible blobs (real servers)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from clearml_hooks import InputModel, Model, OutputModel, Task
from clearml_hooks.cli import cli


def _s3fs():
    import s3fs

    return s3fs.S3FileSystem(key=os.environ["AWS_ACCESS_KEY_ID"],
                             secret=os.environ["AWS_SECRET_ACCESS_KEY"],
                             client_kwargs={"endpoint_url": os.environ["CLEARML_HOOKS_S3_ENDPOINT_URL"]})


def test_registry_on_postgres_and_s3(team_store, tmp_path):
    bucket = team_store["bucket"]
    with Task.init(project_name="team", task_name="registry") as task:
        assert task.store.catalog.engine.dialect.name == "postgresql"
        shared = tmp_path / "shared.pt"
        shared.write_bytes(b"shared weights")
        unique = tmp_path / "unique.pt"
        unique.write_bytes(b"unique weights")
        a = OutputModel(name="a", tags=["prod", "cv"], label_enumeration={"cat": 0})
        b = OutputModel(name="b", tags=["dev"])
        c = OutputModel(name="c", tags=["prod"])
        a.update_weights(str(shared), iteration=1)
        b.update_weights(str(shared))
        c.update_weights(str(unique), async_enable=False)
        assert OutputModel.wait_for_uploads(timeout=120)
        assert a.url == b.url and a.url.startswith(f"s3://{bucket}/models/")
        assert len(_s3fs().find(f"{bucket}/models")) == 2, "identical bytes are stored once"
        assert Path(a.get_local_copy()).read_bytes() == b"shared weights"

        a.set_metadata("dataset", "imagenet")
        a.set_metadata("epochs", 10)
        c.set_metadata("dataset", "imagenet")
        assert {m.name for m in Model.query_models(tags=["prod"])} == {"a", "c"}
        assert [m.name for m in Model.query_models(tags=["__$and", "prod", "cv"])] == ["a"]
        assert [m.name for m in Model.query_models(tags=["prod", "-cv"])] == ["c"]
        assert [m.name for m in Model.query_models(
            tags=["prod"], metadata={"dataset": "imagenet", "epochs": 10})] == ["a"]
        assert a.get_metadata_casted("epochs") == 10
        assert [m.name for m in Model.query_models(project_name="team", max_results=1)] == ["c"]

        c.publish()
        with pytest.raises(ValueError, match="published"):
            c.update_weights(str(shared))
        b.archive()
        assert {m.name for m in Model.query_models()} == {"a", "c"}

        # removing a keeps the bytes b still uses; removing c deletes its own
        assert Model.remove(a)
        assert Path(b.get_local_copy(force_download=True)).read_bytes() == b"shared weights"
        c_sha = c.snapshots[0]["digest"]
        assert Model.remove(c, force=True)
        assert not task.store.blobs.exists(c_sha)
        assert len(_s3fs().find(f"{bucket}/models")) == 1

        # a model that lives in the bucket already: registered, then fetched from S3
        _s3fs().pipe(f"{bucket}/external/bert.bin", b"pretrained")
        imported = InputModel.import_model(f"s3://{bucket}/external/bert.bin", name="bert")
        assert InputModel.import_model(f"s3://{bucket}/external/bert.bin") == imported
        task.connect(imported)
        assert task.models["input"]["bert"] == imported
        assert Path(imported.get_local_copy()).read_bytes() == b"pretrained"

    result = CliRunner().invoke(cli, ["models", "list", "--archived", "--json"], obj={})
    assert result.exit_code == 0, result.output
    assert {r["name"] for r in json.loads(result.output)} == {"b", "bert"}
    result = CliRunner().invoke(cli, ["models", "tag", b.id, "+kept"], obj={})
    assert result.exit_code == 0 and Model(b.id).tags == ["dev", "kept"]
