"""Templates see a case as dotted paths to its values."""

from datetime import UTC, datetime

from careloop.domain.case import Case
from careloop.domain.rules import render
from careloop.engine.actions import TemplateValues, flatten

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _recursive_flatten(case: Case) -> dict[str, object]:
    """The plain recursive walk: what flatten must equal, order and collisions included."""
    values: dict[str, object] = {"state": case.state, "assignee": case.assignee, "id": case.id}

    def walk(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for name, child in node.items():
                walk(f"{prefix}{name}.", child)
        else:
            values[prefix[:-1]] = node

    walk("", case.data)
    return values


def test_flatten_gives_each_leaf_its_dotted_path_in_data_order() -> None:
    data = {
        "patient": {"given_name": "Ana", "address": {"city": "Lyon", "lines": ["1 rue"]}},
        "empty": {},
        "a.b": 1,
        "a": {"b": 2, "c": None},
        "state": "from the data",
        "diagnoses": [{"code": "I10"}],
        "z": 0,
    }
    case = Case(9, "referral", "referral", 1, "intake", 1, data, NOW, NOW, NOW, assignee="sam")
    flat = flatten(case)
    assert list(flat.items()) == list(_recursive_flatten(case).items())
    assert flat["patient.address.city"] == "Lyon" and flat["a.b"] == 2
    assert flat["state"] == "from the data" and "empty" not in flat


def test_template_values_answer_as_flatten_does() -> None:
    data = {
        "patient": {"given_name": "Ana", "address": {"city": "Lyon", "lines": ["1 rue"]}},
        "payer": {"name": "Evergreen", "plan": {"code": "P1"}},
        "empty": {},
        "id": {"external": "X-1"},
        "state": "from the data",
        "diagnoses": [{"code": "I10"}],
        "z": 0,
        "flag": False,
    }
    for assignee in ("sam", None):
        case = Case(
            9, "referral", "referral", 1, "intake", 1, data, NOW, NOW, NOW, assignee=assignee
        )
        flat, lazy = flatten(case), TemplateValues(case)
        paths = [
            *flat,
            "patient",
            "patient.address",
            "payer.plan",
            "empty",
            "missing",
            "patient.missing",
            "z.deeper",
            "diagnoses.code",
            "id",
            "assignee",
            "state",
        ]
        for path in paths:
            assert lazy.get(path) == flat.get(path), path
            assert render(f"<{{{{ {path} }}}}>", lazy) == render(f"<{{{{ {path} }}}}>", flat)
        assert dict(lazy) == flat
