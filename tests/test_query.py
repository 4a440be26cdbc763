"""Model.query_models: tag filter operators (as the ClearML docs define them), metadata, order."""

from __future__ import annotations

import time

import pytest

from clearml_hooks import Model, OutputModel
from clearml_hooks.store.model_ops import parse_tag_filter


@pytest.fixture
def tagged(task):
    """One model per tag combination over a, b, c, d (plus one without tags)."""
    combos = {
        "none": [], "a": ["a"], "b": ["b"], "c": ["c"], "ab": ["a", "b"], "ac": ["a", "c"],
        "bc": ["b", "c"], "cd": ["c", "d"], "abc": ["a", "b", "c"], "bcd": ["b", "c", "d"],
        "acd": ["a", "c", "d"],
    }
    for name, tags in combos.items():
        OutputModel(name=name, tags=tags)
    return combos


def _names(**kwargs) -> set[str]:
    return {m.name for m in Model.query_models(**kwargs)}


def _expect(combos, predicate) -> set[str]:
    return {name for name, tags in combos.items() if predicate(set(tags))}


@pytest.mark.parametrize("tags,predicate", [
    # the examples of the ClearML docs (model_sdk "Tag Filters"), with their stated meaning
    (["a", "b", "c"], lambda t: "a" in t or "b" in t or "c" in t),
    (["__$and", "a", "b", "c"], lambda t: {"a", "b", "c"} <= t),
    (["__$not", "a", "b", "__$not", "c"], lambda t: "a" not in t and "b" in t and "c" not in t),
    (["a", "b", "__$and", "c", "d"], lambda t: "a" in t or "b" in t or {"c", "d"} <= t),
    (["__$and", "__$or", "a", "b", "__$and", "c", "d"],
     lambda t: ("a" in t or "b" in t) and {"c", "d"} <= t),
    # the example of the SDK docstring
    (["__$all", "a", "b", "__$or", "c", "__$not", "d"],
     lambda t: {"a", "b"} <= t and ("c" in t or "d" not in t)),
    # '-' excludes; __$all is __$and; __$any is __$or
    (["b", "-c"], lambda t: "b" in t and "c" not in t),
    (["-a"], lambda t: "a" not in t),
    (["__$all", "c", "d"], lambda t: {"c", "d"} <= t),
    (["__$any", "d", "a"], lambda t: "d" in t or "a" in t),
    (["__$and", "a", "-b"], lambda t: "a" in t and "b" not in t),
    ([None], lambda t: not t),
    (["missing"], lambda t: False),
])
def test_tag_filters(tagged, tags, predicate):
    assert _names(tags=tags) == _expect(tagged, predicate)


def test_bad_tag_filters(task):
    for bad in (["__$xor", "a"], ["a", "__$not"], ["__$not", "__$and", "a"], ["-"], [3]):
        with pytest.raises(ValueError):
            Model.query_models(tags=bad)


def test_parse_tag_filter_global_operator():
    assert parse_tag_filter(["a"])[0] == "or"
    assert parse_tag_filter(["__$and", "a"])[0] == "and"
    assert parse_tag_filter(["__$all", "a"])[0] == "and"
    assert parse_tag_filter(["a", "__$and", "b"])[0] == "or"


def test_metadata_exact_match_on_every_key(task):
    a, b, c = OutputModel(name="a"), OutputModel(name="b"), OutputModel(name="c")
    a.set_metadata("dataset", "imagenet")
    a.set_metadata("epochs", 10)
    b.set_metadata("dataset", "imagenet")
    b.set_metadata("epochs", 20)
    c.set_metadata("dataset", "imagenet-21k")
    assert _names(metadata={"dataset": "imagenet"}) == {"a", "b"}
    assert _names(metadata={"dataset": "imagenet", "epochs": 10}) == {"a"}
    assert _names(metadata={"dataset": "imagenet", "epochs": "20"}) == {"b"}
    assert _names(metadata={"dataset": {"value": "imagenet-21k", "type": "str"}}) == {"c"}
    assert _names(metadata={"dataset": "imagen"}) == set()
    assert _names(metadata={"nope": "imagenet"}) == set()


def test_project_name_published_archived(task):
    from clearml_hooks.store import model_ops

    x = OutputModel(name="x")
    y = OutputModel(name="x-large")
    z = OutputModel(name="z")
    model_ops.set_project(task.store.catalog, z.id, "elsewhere")
    assert _names(project_name="tests") == {"x", "x-large"}
    assert _names(project_name="test") == set(), "project names are exact"
    assert _names(model_name="x") == {"x"}, "model names are exact"
    y.publish()
    assert _names(only_published=True) == {"x-large"}
    x.archive()
    assert _names() == {"x-large", "z"}
    assert _names(include_archived=True) == {"x", "x-large", "z"}
    assert _names(tags=None, include_archived=True, project_name="elsewhere") == {"z"}


def test_most_recently_updated_first_and_paging(task):
    models = []
    for i in range(5):
        models.append(OutputModel(name=f"m{i}", tags=["t"]))
        time.sleep(0.005)
    assert [m.name for m in Model.query_models()] == ["m4", "m3", "m2", "m1", "m0"]
    models[1].comment = "touched"  # an update moves it first, as the docs say
    assert [m.name for m in Model.query_models(tags=["t"])][:2] == ["m1", "m4"]
    assert [m.name for m in Model.query_models(max_results=2)] == ["m1", "m4"]
    assert [m.name for m in Model.query_models(max_results=2, offset=2)] == ["m3", "m2"]
    assert [m.name for m in Model.query_models(order_by="name")] == [f"m{i}" for i in range(5)]
    assert [m.name for m in Model.query_models(order_by="created")][0] == "m0"
    assert Model.query_models(max_results=0) == []
    with pytest.raises(ValueError):
        Model.query_models(order_by="color")
    assert all(type(m) is Model for m in Model.query_models())
