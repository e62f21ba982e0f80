"""How a connector's record becomes the completion call the adapter was trained for."""

from __future__ import annotations

from gateway.domain import integrations as integ
from shared.rendering import completion_text, label_constraint

SPEC = integ.IntegrationSpec.model_validate(
    {
        "name": "case-router",
        "system": "salesforce",
        "model": "support-router@production",
        "input_mapping": {"subject": "$.Subject", "description": "$.Description"},
        "template": "{subject}\n{description}",
        "output": {"field": "Type", "labels": ["billing", "technical"]},
    }
)
RECORD = {"Id": "500A", "Subject": "Card charged", "Description": "Card charged twice"}


def test_labels_go_as_written_and_inference_offers_them_as_trained() -> None:
    prompt = integ.prompt_for(SPEC, RECORD, "record")
    body = integ.completion_body(SPEC, prompt)
    assert body["prompt"] == "Card charged\nCard charged twice"
    assert body["choices_allowed"] == ["billing", "technical"]
    # Inference holds the engine to the labels as training spelled them after this prompt (a
    # new word) and answers them as written.
    constraint = label_constraint(body["prompt"], body["choices_allowed"])
    assert constraint is not None
    trained = completion_text(prompt, "billing")
    assert trained == " billing" and trained in constraint.engine_choices
    assert constraint.answer(" billing") == "billing"
    assert integ.mapped(SPEC, RECORD, "billing") == {"Id": "500A", "Type": "billing"}


def test_prompt_ending_in_whitespace_keeps_labels_as_given() -> None:
    spec = SPEC.model_copy(update={"template": "{subject}: {description}\nType: "})
    prompt = integ.prompt_for(spec, RECORD, "record")
    constraint = label_constraint(prompt, integ.completion_body(spec, prompt)["choices_allowed"])
    assert constraint is not None and constraint.engine_choices == ["billing", "technical"]


def test_a_system_message_makes_the_call_a_chat_completion() -> None:
    spec = SPEC.model_copy(update={"system_prompt": "Route the case to one queue."})
    prompt = integ.prompt_for(spec, RECORD, "record")
    path, body = integ.model_call(spec, prompt)
    assert path == "/v1/chat/completions"
    assert body["messages"] == [
        {"role": "system", "content": "Route the case to one queue."},
        {"role": "user", "content": "Card charged\nCard charged twice"},
    ]
    assert body["choices_allowed"] == ["billing", "technical"] and body["temperature"] == 0
    assert integ.model_call(SPEC, prompt)[0] == "/v1/completions"
