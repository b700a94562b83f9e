"""One error table (`mlserve.errors.ERROR_TABLE`): every error class has its own row, and what HTTP
(both error shapes), gRPC and the gRPC gate answer for an error is what its row says."""

from __future__ import annotations

import http
import inspect

import grpc
import orjson
import pytest

from mlserve import errors
from mlserve.server.grpc.gate import Refused
from mlserve.server.grpc.server import grpc_code
from mlserve.server.middleware import status_for
from mlserve.server.response import ErrorShape, error_response, status_response

CLASSES = [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
           if issubclass(cls, errors.MlserveError) and cls.__module__ == errors.__name__]


def _instance(cls: type[errors.MlserveError]) -> errors.MlserveError:
    return cls("what went wrong")


def test_every_error_class_has_its_own_row():
    assert len(CLASSES) >= 15
    assert sorted(c.__name__ for c in CLASSES) == sorted(c.__name__ for c in errors.ERROR_TABLE)
    for kind in errors.ERROR_TABLE.values():
        assert 400 <= kind.http_status < 600 and http.HTTPStatus(kind.http_status)
        assert kind.grpc_code in grpc.StatusCode.__members__
        assert kind.openai_type


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_http_grpc_and_openai_answers_follow_the_row(cls):
    kind, exc = errors.ERROR_TABLE[cls], _instance(cls)
    assert errors.kind_of(exc) is kind and status_for(exc) == kind.http_status
    assert grpc_code(exc) is grpc.StatusCode[kind.grpc_code]
    refused = Refused(exc)
    assert (refused.code, refused.message, refused.retry_after_s) == (kind.grpc_code, str(exc), exc.retry_after_s)
    plain = error_response(exc)
    assert plain.status == kind.http_status and orjson.loads(plain.body) == {"error": "what went wrong"}
    openai = error_response(exc, ErrorShape.OPENAI)
    assert openai.status == kind.http_status
    assert orjson.loads(openai.body) == {"error": {"message": "what went wrong", "type": kind.openai_type,
                                                   "param": None, "code": kind.openai_code}}


def test_a_subclass_defined_elsewhere_takes_its_nearest_listed_ancestors_row():
    class JobRecordGone(errors.JobNotFound):
        pass

    assert errors.kind_of(JobRecordGone("x")) is errors.ERROR_TABLE[errors.JobNotFound]
    assert errors.kind_of(errors.ModelHung("x")).http_status == 504  # RequestTimeout before InferenceFailed


def test_rows_that_share_a_status_agree_on_openais_type():
    """A refusal that is a bare status (aiohttp's 404 for no route) gets the type of the status's rows."""
    by_status: dict[int, set[str]] = {}
    for kind in errors.ERROR_TABLE.values():
        by_status.setdefault(kind.http_status, set()).add(kind.openai_type)
    assert all(len(types) == 1 for types in by_status.values()), by_status
    for status, (openai_type,) in by_status.items():
        body = orjson.loads(status_response(status, "no", ErrorShape.OPENAI).body)
        assert body["error"]["type"] == openai_type
    assert orjson.loads(status_response(405, "no", ErrorShape.OPENAI).body)["error"]["type"] == "server_error"


def test_retry_after_and_the_authentication_challenge_come_with_the_answer():
    assert error_response(errors.Overloaded("full", 2.4)).headers["Retry-After"] == "2"
    assert error_response(errors.ServerBusy("busy")).headers["Retry-After"] == "1"
    assert "Retry-After" not in error_response(errors.InvalidInput("bad")).headers
    assert error_response(errors.Unauthenticated("who")).headers["WWW-Authenticate"] == 'Bearer realm="mlserve"'


def test_openapi_documents_each_status_of_the_table():
    from mlserve.server.http.openapi import ERROR_STATUSES

    assert set(ERROR_STATUSES) == {str(kind.http_status) for kind in errors.ERROR_TABLE.values()}
