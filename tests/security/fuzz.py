"""Schemathesis over a service's own OpenAPI schema: every operation gets generated valid
and invalid requests; none may answer 5xx (503 with Retry-After only where a dependency is
down on purpose), and every error must be the envelope of API.md."""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

ENVELOPE_KEYS = {"message", "type", "code", "param", "request_id"}


def judge(status: int, headers: Any, body: Any, *, allow_503: bool) -> str | None:
    """What is wrong with one answer, or None."""
    if status >= 500 and not (allow_503 and status == 503 and headers.get("retry-after")):
        return f"HTTP {status}"
    if status >= 400:
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict) or not set(err) >= ENVELOPE_KEYS:
            return f"HTTP {status} without the error envelope: {str(body)[:200]}"
    return None


def _runner(
    op: Any, mode: GenerationMode, headers: dict[str, str], allow_503: bool, max_examples: int
) -> tuple[Any, list[str], list[int]]:
    """A hypothesis test for one operation and mode, and where it records what it finds."""
    where = f"{op.method.upper()} {op.path} [{mode}]"
    problems: list[str] = []
    sent = [0]

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        sent[0] += 1
        resp = case.call(headers=headers)
        try:
            body = json.loads(resp.content)
        except ValueError:
            body = resp.content[:200]
        problem = judge(resp.status_code, resp.headers, body, allow_503=allow_503)
        if problem and not any(problem in p for p in problems):
            problems.append(f"{where}: {problem}\n    {case.as_curl_command()}")

    return run, problems, sent


def fuzz(
    schema: Any,
    headers: dict[str, str],
    *,
    max_examples: int = 25,
    allow_503: bool = False,
    skip: tuple[str, ...] = (),
) -> tuple[int, list[str]]:
    """Run every operation of ``schema``; return (requests sent, problems found)."""
    problems: list[str] = []
    sent = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if any(f"{op.method.upper()} {op.path}".startswith(s) for s in skip):
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run, found, count = _runner(op, mode, headers, allow_503, max_examples)
            try:
                run()
            except Unsatisfiable:  # nothing in this operation can be made invalid
                pass
            except Exception as exc:  # generation itself failed: report, go on
                found.append(f"{op.method.upper()} {op.path} [{mode}]: {exc!r:.300}")
            problems += found
            sent += count[0]
    return sent, problems


def load(app: Any) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", app)
