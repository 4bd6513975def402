"""A retried failure is said once, and again only when it changes or after a success."""

from __future__ import annotations

import logging

import pytest

from hfl.repeats import Repeats


def test_a_repeated_message_is_said_once_until_it_changes_or_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("hfl.test.repeats")
    said = Repeats(log)
    with caplog.at_level(logging.INFO, logger="hfl.test.repeats"):
        for _ in range(3):
            said.say(logging.WARNING, "the authority refused: revoked")
        said.say(logging.WARNING, "the authority does not answer")
        said.say(logging.WARNING, "the authority does not answer")
        said.clear()
        said.say(logging.WARNING, "the authority does not answer")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "the authority refused: revoked"),
        (logging.WARNING, "the authority does not answer"),
        (logging.WARNING, "the authority does not answer"),
    ]


def test_a_refused_certificate_is_a_warning_and_says_what_would_help() -> None:
    import grpc

    from hfl.rpc.enrolment import upkeep_problem

    def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)

    level, text = upkeep_problem(
        rpc_error(grpc.StatusCode.UNAUTHENTICATED, "the certificate has been revoked")
    )
    assert level == logging.WARNING
    assert text.startswith(
        "the authority no longer accepts this node's certificate (the certificate has been"
    )
    assert "enrols again with a new one-time token" in text
    level, text = upkeep_problem(rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    assert (level, text) == (logging.INFO, "certificate upkeep will retry: connection refused")
