"""The HTTP surface under hostile input: Schemathesis fuzzes it from the app's own OpenAPI document.

Against the real loopback server: no answer is ever a 5xx, and every 4xx is a JSON error body (on
/v1/generate, an `error` message as the document says). Beside it, the bodies Schemathesis does
not think of: deep nesting, lone surrogates, and a body larger than the limit that never ends.
"""

from __future__ import annotations

import json
import socket

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from livegen.protocol import Error

LIMIT = 64 * 1024  # max_message_bytes of the `server` fixture
JSON = {"content-type": "application/json"}


@schemathesis.check
def client_errors_are_json(ctx, response, case) -> None:
    """A 4xx says what was wrong as JSON; on /v1/generate, as an `error` message with a code."""
    if 400 <= response.status_code < 500:
        body = json.loads(response.content)
        assert isinstance(body, dict), body
        if case.path == "/v1/generate" and response.status_code != 403:
            assert Error.model_validate(body).code, body


CHECKS = [not_a_server_error, client_errors_are_json, response_schema_conformance]


def fuzz(server, operation: str | None, mode: GenerationMode, max_examples: int) -> None:
    """Cases from the served OpenAPI document, sent to the live server; every check holds for each."""
    # Built here, not at import: schemathesis' pytest fixture loader does not run under pytest 9.
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    strategy = (schema if operation is None else schema[operation]["POST"]).as_strategy(mode)

    @settings(max_examples=max_examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def each(case) -> None:
        case.call_and_validate(base_url=server.url, checks=CHECKS)

    each()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generate_body_gets_a_server_error_and_every_client_error_is_json(server, mode):
    fuzz(server, "/v1/generate", mode, 60)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_to_any_endpoint_gets_a_server_error(server, mode):
    fuzz(server, None, mode, 30)


@pytest.mark.parametrize("body", [
    '{"type":"generate","id":"d1","prompt":' + "[" * 1500 + "]" * 1500 + "}",  # RecursionError was a 500
    '{"prompt":' + '{"a":' * 40 + "1" + "}" * 40 + "}",
])
def test_deep_nesting_in_the_body_is_a_typed_400(server, body):
    response = httpx.post(server.url + "/v1/generate", content=body, headers=JSON)
    assert (response.status_code, response.json()["code"]) == (400, "nesting_too_deep")


def test_a_lone_surrogate_in_the_body_is_a_typed_422(server):
    response = httpx.post(server.url + "/v1/generate", content=b'{"prompt": "\\ud800"}', headers=JSON)
    assert (response.status_code, response.json()["code"]) == (422, "invalid")
    assert "surrogate" in response.json()["message"]


def test_an_endless_body_is_refused_once_it_passes_the_limit(server):
    """A chunked body with no length: the answer comes at the limit, not after a body that never ends."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 4096
        for _ in range(LIMIT // len(chunk) + 1):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        answer = sock.recv(65536)  # the final chunk is never sent
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 413 " in status_line, answer
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["code"] == "message_too_large"


def test_a_declared_length_over_the_limit_is_refused_before_the_body(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1))
        assert b" 413 " in sock.recv(65536).partition(b"\r\n")[0]
