"""Plan validation and reference substitution, without processes."""

from __future__ import annotations

import pytest

from orchestrator.plans import PlanError, references, substitute, validate_plan


def test_dependency_order() -> None:
    plan = [
        {"id": "d", "depends_on": ["b", "c"]},
        {"id": "b", "depends_on": ["a"]},
        {"id": "c", "depends_on": ["a"]},
        {"id": "a"},
    ]
    order = validate_plan(plan)
    assert order.index("a") < order.index("b") < order.index("d")
    assert order.index("c") < order.index("d")


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ([{"id": "a"}, {"id": "a"}], "duplicate id 'a'"),
        ([{"id": "a", "depends_on": ["zz"]}], "unknown id 'zz'"),
        ([{"id": "bad id"}], "bad id"),
        ([{"type": "echo"}], "task 0: id None"),
        ([{"id": "a", "config": {"x": "$b"}}, {"id": "b"}], r"refers to \$b"),
        (
            [
                {"id": "a", "depends_on": ["c"]},
                {"id": "b", "depends_on": ["a"]},
                {"id": "c", "depends_on": ["b"]},
            ],
            "cycle: a -> b -> c -> a",
        ),
        ([{"id": "a", "depends_on": ["a"]}], "cycle: a -> a"),
    ],
)
def test_rejections_name_the_problem(plan: list, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        validate_plan(plan)


def test_known_ids_may_be_depended_on_but_not_reused() -> None:
    assert validate_plan([{"id": "b", "depends_on": ["a"]}], known=["a"]) == ["b"]
    with pytest.raises(PlanError, match="duplicate id 'a'"):
        validate_plan([{"id": "a"}], known=["a"])


def test_references_are_found_everywhere_in_a_config() -> None:
    config = {"x": "$a", "y": ["text $b.items.0 more", {"z": "$$notref $1"}], "n": 3}
    assert references(config) == {"a", "b", "1"}


def test_substitution() -> None:
    data = {"a": {"results": [{"title": "first"}, {"title": "second"}], "n": 2}, "1": 7}
    config = {
        "whole": "$a",
        "field": "$a.results.1.title",
        "number": "$1",
        "inline": "n=$a.n, top=$a.results.0, price $$5",
        "nested": ["$a.n"],
    }
    assert substitute(config, data.__getitem__) == {
        "whole": data["a"],
        "field": "second",
        "number": 7,
        "inline": 'n=2, top={"title": "first"}, price $5',
        "nested": [2],
    }


def test_a_missing_path_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match=r"\$a.nope: no 'nope'"):
        substitute({"x": "$a.nope"}, {"a": {"n": 1}}.__getitem__)
