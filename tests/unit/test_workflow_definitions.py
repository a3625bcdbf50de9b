"""Loading validates everything and names the file, the line and the problem."""

from pathlib import Path

import pytest

from careloop.adapters.definitions import load_workflow_text, shipped_definitions
from careloop.domain.errors import DefinitionInvalid

SHIPPED = dict(shipped_definitions())["careloop/definitions/referral.yaml"]

MINIMAL = """\
key: tiny
version: 1
case_type: referral
initial: open
states:
  open:
    fhir: {task_status: received, business_status: open, service_request_status: active}
  done:
    terminal: true
    fhir: {task_status: completed, business_status: done, service_request_status: completed}
transitions:
  - name: finish
    from: open
    to: done
    roles: [administrator]
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(DefinitionInvalid) as caught:
        load_workflow_text(text, "wf.yaml")
    return [str(p) for p in caught.value.problems]


def test_shipped_referral_workflow_loads_with_every_stage() -> None:
    workflow = load_workflow_text(SHIPPED, "referral.yaml")
    for state in (
        "intake_received",
        "documentation_review",
        "eligibility_verification",
        "authorization_pending",
        "clinical_triage",
        "specialist_assignment",
        "appointment_scheduled",
        "patient_notified",
        "completed",
        "awaiting_information",
        "eligibility_pending",
        "declined",
        "cancelled",
        "closed",
    ):
        assert state in workflow.states
    assert workflow.states["awaiting_information"].kind == "hold"
    assert workflow.states["completed"].fhir.task_status == "completed"
    assert workflow.sla_seconds("clinical_triage", "emergent") == 3600


def test_minimal_workflow_loads() -> None:
    workflow = load_workflow_text(MINIMAL, "wf.yaml")
    assert workflow.initial == "open"
    assert [t.name for t in workflow.transitions_from("open")] == ["finish"]


def test_unknown_state_in_transition_names_file_and_line() -> None:
    problems = _problems(MINIMAL.replace("to: done", "to: nowhere"))
    assert any(p.startswith("wf.yaml:14:") and "unknown state 'nowhere'" in p for p in problems)


def test_unreachable_state_is_an_error() -> None:
    text = MINIMAL.replace(
        "transitions:",
        """  orphan:
    terminal: true
    fhir: {task_status: failed, business_status: x, service_request_status: revoked}
transitions:""",
    )
    assert any(
        "'orphan' is unreachable" in p and p.startswith("wf.yaml:11:") for p in _problems(text)
    )


def test_non_terminal_dead_end_is_an_error() -> None:
    text = MINIMAL.replace("    terminal: true\n", "")
    assert any("'done' is a dead end" in p for p in _problems(text))


def test_invalid_cel_guard_is_an_error_with_its_line() -> None:
    text = MINIMAL + "    guard: case.urgency ==\n"
    problems = _problems(text)
    assert any(p.startswith("wf.yaml:16:") and "invalid guard" in p for p in problems)


def test_guard_referencing_unknown_field_is_an_error() -> None:
    problems = _problems(MINIMAL + "    guard: case.favourite_colour == 'red'\n")
    assert any("unknown field 'case.favourite_colour'" in p for p in problems)


def test_guard_with_type_mismatch_is_an_error() -> None:
    problems = _problems(MINIMAL + "    guard: case.urgency > 3\n")
    assert any("type error" in p for p in problems)


def test_unknown_required_field_role_and_document_are_errors() -> None:
    text = MINIMAL + (
        "    requires_fields: [patient.shoe_size]\n    requires_documents: [selfie]\n"
    )
    text = text.replace("roles: [administrator]", "roles: [janitor]")
    problems = "\n".join(_problems(text))
    assert "unknown field 'patient.shoe_size'" in problems
    assert "unknown document type 'selfie'" in problems
    assert "unknown role 'janitor'" in problems


def test_bad_fhir_codes_unknown_keys_and_bad_sla_are_errors() -> None:
    text = MINIMAL.replace("task_status: received", "task_status: sleeping").replace(
        "  open:\n", "  open:\n    colour: blue\n    sla: {routine: soon}\n"
    )
    problems = "\n".join(_problems(text))
    assert "'sleeping' is not a FHIR Task.status code" in problems
    assert "unknown key 'colour'" in problems
    assert "'soon' is not a duration" in problems


def test_every_problem_is_reported_at_once() -> None:
    text = MINIMAL.replace("to: done", "to: nowhere").replace(
        "roles: [administrator]", "roles: [janitor]"
    )
    assert len(_problems(text)) >= 2


def test_malformed_yaml_names_the_line() -> None:
    problems = _problems("key: x\nstates: [unclosed\n")
    assert problems[0].startswith("wf.yaml:")
    assert "not valid YAML" in problems[0]


def test_yaml_tags_that_construct_objects_are_refused() -> None:
    problems = _problems("key: !!python/object/apply:os.system ['true']\n")
    assert "not valid YAML" in problems[0]


def test_cli_validate_reports_problems(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from careloop.cli import cli

    path = tmp_path / "bad.yaml"
    path.write_text(MINIMAL.replace("to: done", "to: nowhere"))
    result = CliRunner().invoke(cli, ["workflows", "validate", str(path)])
    assert result.exit_code == 1
    assert f"{path}:14: unknown state 'nowhere'" in result.output
    good = tmp_path / "good.yaml"
    good.write_text(SHIPPED)
    result = CliRunner().invoke(cli, ["workflows", "validate", str(good)])
    assert result.exit_code == 0, result.output
    assert "referral-standard v1" in result.output
