"""Schemathesis against the service's own OpenAPI document, on a real server: every
operation, valid and invalid requests, no 5xx and no response outside the documented schema.

Each operation's test runs three of schemathesis' phases: the document's own examples, the
coverage phase (boundary values of every constraint: a minimum, one below it, a maximum, one
above it, wrong types, missing fields, unsupported methods) and random fuzzing. Random
fuzzing is what found `"top_k": 1180591620717411303424` (a 500: "Overflow when unpacking long
long"); the coverage phase is what turns each new bound in the schema into a tested edge.
Requests that once answered 5xx are replayed, every run, by test_replay_known_bad.py.

A failure reports the server's log lines for the request and the run's seed: FUZZ_SEED=<seed>
repeats that run's generation, given the same selection of tests.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.meta import TestPhase
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.fuzz.conftest import FUZZ_MAX_NEW_TOKENS
from tests.fuzz.support import openapi_document, schema, server_log_since
from tests.integration.conftest import Server
from tests.service.tiny_models import BIGRAM_ID, GPT_ID

pytestmark = pytest.mark.fuzz

MIN_TOTAL_CASES = 3000
LOADED_MODELS = (GPT_ID, BIGRAM_ID)
# Stateful scenarios (each a few chained calls) for test_linked_operations_conform.
STATEFUL_SCENARIOS = 40
STATEFUL_STEPS = 6
# The body field of each generating operation that the server caps at FUZZ_MAX_NEW_TOKENS.
TOKEN_LIMITS = {"POST /v1/generate": "max_new_tokens", "POST /v1/completions": "max_tokens"}
# Their documented defaults (/v1/generate's, 200, is over the cap).
TOKEN_DEFAULTS = {
    field: schema.raw_schema["components"]["schemas"][body]["properties"][field].get("default")
    for body, field in (("GenerateRequest", "max_new_tokens"), ("CompletionRequest", "max_tokens"))
}

OPERATIONS = [result.ok() for result in schema.get_all_operations()]
# Operations without parameters or body (GET /health, /ready, /v1/models, /metrics,
# POST /admin/reload) give Hypothesis nothing to vary: it stops after one case. The cases
# per operation are spread over the others, so that random fuzzing alone reaches the minimum.
TAKING_INPUT = [op for op in OPERATIONS if op.body or any(True for _ in op.iter_parameters())]
EXAMPLES_PER_OPERATION = math.ceil(MIN_TOTAL_CASES / len(TAKING_INPUT))

# (operation label, phase) -> cases run; the label is the documented operation, whatever
# method the coverage phase sent.
cases_run: Counter[tuple[str, str]] = Counter()


def test_the_server_publishes_this_document(fuzz_server: Server) -> None:
    published = httpx.get(f"{fuzz_server.url}/docs/openapi.json", timeout=30).json()
    assert published == openapi_document()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_conforms(case: schemathesis.Case, fuzz_server: Server) -> None:
    phase = case.meta.phase.name.value if case.meta is not None else "explicit"
    cases_run[case.operation.label, phase] += 1
    aimed = aim_at_a_loaded_model(case, cases_run.total())
    # What a loaded model accepts (its vocabulary, its kind) is beyond the schema: a 400 for
    # a schema-valid request to it is the documented answer, so only that check is skipped.
    excluded = [positive_data_acceptance] if aimed else []
    log_start = len(fuzz_server.log())
    try:
        case.call_and_validate(base_url=fuzz_server.url, timeout=60, excluded_checks=excluded)
    except FailureGroup as failure:
        # The server's side of it goes into the report (schemathesis drops exception notes).
        log = server_log_since(fuzz_server, log_start, wait_s=0.5)
        message = (
            f"{failure.message.rstrip()}\n\nServer log during this request:\n{log}\n\n"
            f"FUZZ_SEED={schema.config.seed} repeats this run's generation (same tests selected)"
        )
        raise FailureGroup(list(failure.exceptions), message) from None


def aim_at_a_loaded_model(case: schemathesis.Case, n: int) -> bool:
    """Random model ids only ever reach the 404; every other schema-valid case names a loaded
    model instead, so the fuzzed parameters reach the models too. Its token count is held to
    the server's cap, a setting the schema cannot show: otherwise /v1/generate's default of 200
    tokens would stop nearly every case at the cap's 400, before the sampler."""
    if n % 2 == 0 or case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
        return False
    model = LOADED_MODELS[n % 4 // 2]
    if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
        case.body["model"] = model
        field = TOKEN_LIMITS.get(case.operation.label)
        tokens = case.body.get(field, TOKEN_DEFAULTS.get(field))
        if isinstance(tokens, int) and tokens > FUZZ_MAX_NEW_TOKENS:
            case.body[field] = FUZZ_MAX_NEW_TOKENS
        return True
    if case.path_parameters and "model_id" in case.path_parameters:
        case.path_parameters["model_id"] = model
        return True
    return False


def test_linked_operations_conform(fuzz_server: Server) -> None:
    """Stateful testing: the document has no OpenAPI links, but schemathesis infers some from
    the response schemas: GET /v1/models lists `data[].id`, which feeds the `model_id` of
    GET /v1/models/{model_id}/bigram-table and /embeddings. Nothing else chains (the POST
    routes take the model id in the body, which inference does not link), so this exercises
    those two links; the POST routes reach loaded models through aim_at_a_loaded_model.
    A 200 from either per-model route needs a loaded model's id, which only the link supplies
    (the document's example id, gpt-char, is not loaded here), so it proves the link ran."""
    answers: Counter[tuple[str, int]] = Counter()

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict:
            return {"base_url": fuzz_server.url, "timeout": 60}

        def after_call(self, response: schemathesis.Response, case: schemathesis.Case) -> None:
            super().after_call(response, case)
            answers[case.operation.label, response.status_code] += 1

        def validate_response(
            self, response: schemathesis.Response, case: schemathesis.Case, **kwargs: Any
        ) -> None:
            # A linked id is a loaded model's, but the bigram table of a GPT (and the like)
            # is still the documented 400: beyond the schema, as in the stateless test.
            case.validate_response(
                response,
                excluded_checks=[positive_data_acceptance],
                transport_kwargs=kwargs or None,
                recorder=self.recorder,
            )

    Workflow.run(
        settings=settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=STATEFUL_STEPS,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    print(f"\nstateful calls (operation, status): {dict(sorted(answers.items()))}")
    for label in ("GET /v1/models/{model_id}/bigram-table", "GET /v1/models/{model_id}/embeddings"):
        assert answers[label, 200] > 0, f"no linked call of {label} reached a loaded model"


def test_enough_cases_ran() -> None:
    if not cases_run:
        pytest.skip("the fuzz test did not run in this session")
    total = cases_run.total()
    per_operation: Counter[str] = Counter()
    per_phase: Counter[str] = Counter()
    for (label, phase), n in cases_run.items():
        per_operation[label] += n
        per_phase[phase] += n
    summary = ", ".join(f"{label}: {n}" for label, n in sorted(per_operation.items()))
    print(
        f"\nschemathesis ran {total} cases over {len(per_operation)} operations "
        f"(seed {schema.config.seed}; by phase: {dict(per_phase)}; {summary})"
    )
    assert total >= MIN_TOTAL_CASES, summary
    assert set(per_operation) == {op.label for op in OPERATIONS}, summary
    # The boundary values of every constrained input are sent, not only random ones.
    assert not [
        op.label for op in TAKING_INPUT if cases_run[op.label, TestPhase.COVERAGE.value] == 0
    ], "the coverage phase did not run for these operations"
