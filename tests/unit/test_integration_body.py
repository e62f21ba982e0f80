"""How a connector's record becomes the completion call the adapter was trained for."""

from __future__ import annotations

from gateway.domain import integrations as integ
from services.training.domain.rows import row_pair

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


def test_labels_are_constrained_as_training_spelled_them() -> None:
    prompt = integ.prompt_for(SPEC, RECORD, "record")
    body = integ.completion_body(SPEC, prompt)
    assert body["prompt"] == "Card charged\nCard charged twice"
    # Training puts a space between a prompt and its label (row_pair); the engine must be held
    # to the same spelling or byte-level BPE sees tokens the adapter never learned.
    trained = row_pair({"prompt": prompt, "completion": "billing"})["completion"]
    assert trained in body["choices_allowed"]
    assert body["choices_allowed"] == [" billing", " technical"]
    assert integ.mapped(SPEC, RECORD, " billing") == {"Id": "500A", "Type": "billing"}


def test_prompt_ending_in_whitespace_keeps_labels_as_given() -> None:
    spec = SPEC.model_copy(update={"template": "{subject}: {description}\nType: "})
    body = integ.completion_body(spec, integ.prompt_for(spec, RECORD, "record"))
    assert body["choices_allowed"] == ["billing", "technical"]
