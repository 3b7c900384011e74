"""Schema fuzz of the HTTP service: every answer is one its own OpenAPI schema declares.

Schemathesis generates requests from ``/openapi.json``, valid ones and invalid ones, and
checks each response: no 5xx, a declared status code and content type, a body matching the
declared schema, invalid input rejected. The app runs on the shared tiny index with the
limits users run by default, without an API key (the default) and with one.

Each operation runs as its own Hypothesis test over ``operation.as_strategy()``: the
``schemathesis.pytest.from_fixture`` + ``@schema.parametrize()`` route reads pytest's private
``Function._nodeid``, which pytest 9.2 no longer has.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks

from adaptor.retrieval import Searcher
from adaptor.retrieval.service import create_app

OPERATIONS = [
    ("GET", "/health"),
    ("GET", "/stats"),
    ("POST", "/search/text"),
    ("POST", "/search/image"),
    ("POST", "/classify"),
    ("GET", "/records/{record_id}"),
    ("GET", "/thumbnails/{record_id}"),
]
WITHOUT_INPUT = {"/health", "/stats"}  # nothing to make invalid
UPLOADS = {"/search/image", "/classify"}
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in GenerationMode
    if mode is GenerationMode.POSITIVE or path not in WITHOUT_INPUT
]


@pytest.fixture(scope="module")
def api_schema(service_searcher: Searcher) -> schemathesis.BaseSchema:
    """The service's own schema, loaded from the app as ``adaptor serve`` runs it by default."""
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(service_searcher))


@pytest.fixture(scope="module")
def keyed_schema(service_searcher: Searcher) -> schemathesis.BaseSchema:
    """The same with an API key set (``ADAPTOR_API_KEY``): the fuzz never knows the key."""
    app = create_app(service_searcher, api_key="not-a-generated-value")
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _fuzz(operation: schemathesis.APIOperation, mode: GenerationMode, examples: int) -> None:
    # any bytes fit the schema of an upload; only decoding tells an image from noise (415/422)
    excluded = [checks.positive_data_acceptance] if operation.path in UPLOADS else []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases every run: CI is not a lottery; raise max_examples to hunt
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(excluded_checks=excluded)

    check()


def test_every_operation_is_fuzzed(api_schema: schemathesis.BaseSchema) -> None:
    found = {(method.upper(), path) for path in api_schema for method in api_schema[path]}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_every_response_matches_the_schema(
    api_schema: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    _fuzz(api_schema[path][method], mode, examples=25)


@pytest.mark.parametrize(("method", "path"), [op for op in OPERATIONS if op[1] != "/health"])
def test_with_an_api_key_every_refusal_is_declared(
    keyed_schema: schemathesis.BaseSchema, method: str, path: str
) -> None:
    operation = keyed_schema[path][method]
    assert "401" in operation.definition.raw["responses"]
    _fuzz(operation, GenerationMode.POSITIVE, examples=10)
