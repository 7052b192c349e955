"""Logging: JSON lines carry the running task, and broker passwords never get printed."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest

from amqpworker.log import bound, get_task_logger, hide_password

Configure = Callable[..., AbstractContextManager[None]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("amqp://u:secret@h//", "amqp://u:****@h//"),
        ("amqps://user:p4ss@host:5671/vhost", "amqps://user:****@host:5671/vhost"),
        ("amqp://:secret@h//", "amqp://:****@h//"),
        (
            "tried amqp://a:one@h1// and amqp://b:two@h2//",
            "tried amqp://a:****@h1// and amqp://b:****@h2//",
        ),
        ("amqp://guest@localhost//", "amqp://guest@localhost//"),
        ("amqp://localhost:5672//", "amqp://localhost:5672//"),
        ("no url here", "no url here"),
        ("amqp://u:p@ss@host:5672//", "amqp://u:****@host:5672//"),
        ("amqp://u:a@b@c@host/v", "amqp://u:****@host/v"),
        ("amqp://u:a/b@host//", "amqp://u:****@host//"),
        ("amqp://a:x@y@h1//;amqp://b:z@h2//", "amqp://a:****@h1//;amqp://b:****@h2//"),
    ],
)
def test_hide_password(text: str, expected: str) -> None:
    assert hide_password(text) == expected


def lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_json_line_carries_task_id_and_name(
    logging_config: Configure, capsys: pytest.CaptureFixture[str]
) -> None:
    with logging_config("INFO", "json"):
        logger = get_task_logger("myapp.tasks")
        with bound(task_id="abc-123", task_name="myapp.tasks.add"):
            logger.info("counted", current=3)
        logger.info("outside")

    first, second = lines(capsys.readouterr().err)
    assert first["event"] == "counted"
    assert first["current"] == 3
    assert first["task_id"] == "abc-123"
    assert first["task_name"] == "myapp.tasks.add"
    assert first["level"] == "info"
    assert first["logger"] == "myapp.tasks"
    assert "timestamp" in first
    assert "task_id" not in second


def test_level_filters_lines(logging_config: Configure, capsys: pytest.CaptureFixture[str]) -> None:
    with logging_config("WARNING", "json"):
        logger = get_task_logger("myapp.tasks")
        logger.info("hidden")
        logger.warning("shown")

    assert [line["event"] for line in lines(capsys.readouterr().err)] == ["shown"]


def test_password_in_event_and_fields_is_scrubbed(
    logging_config: Configure, capsys: pytest.CaptureFixture[str]
) -> None:
    with logging_config("INFO", "json"):
        logger = get_task_logger("myapp.tasks")
        with bound(task_id="abc", task_name="t"):
            logger.info("connecting to amqp://u:secret@h//", url="amqp://u:secret@h//")

    err = capsys.readouterr().err
    (line,) = lines(err)
    assert "secret" not in err
    assert line["url"] == "amqp://u:****@h//"
    assert line["event"] == "connecting to amqp://u:****@h//"


def test_stdlib_lines_are_rendered_and_scrubbed(
    logging_config: Configure, capsys: pytest.CaptureFixture[str]
) -> None:
    with logging_config("INFO", "json"):
        logging.getLogger("some.library").warning("lost amqp://u:secret@h//, retrying")

    err = capsys.readouterr().err
    (line,) = lines(err)
    assert "secret" not in err
    assert line["event"] == "lost amqp://u:****@h//, retrying"
    assert line["logger"] == "some.library"


def test_console_format_is_scrubbed_too(
    logging_config: Configure, capsys: pytest.CaptureFixture[str]
) -> None:
    with logging_config("INFO", "console"):
        get_task_logger("myapp").info("hello", url="amqp://u:secret@h//")

    err = capsys.readouterr().err
    assert "hello" in err
    assert "amqp://u:****@h//" in err
    assert "secret" not in err


def test_password_in_a_logged_exception_is_scrubbed(
    logging_config: Configure, capsys: pytest.CaptureFixture[str]
) -> None:
    with logging_config("INFO", "json"):
        logger = get_task_logger("myapp")
        try:
            raise ConnectionError("cannot connect to amqp://u:secret@h//")
        except ConnectionError:
            logger.exception("connect failed")

    err = capsys.readouterr().err
    assert "ConnectionError" in err
    assert "secret" not in err


def test_password_in_a_list_field_is_scrubbed(
    logging_config: Configure, capsys: pytest.CaptureFixture[str]
) -> None:
    with logging_config("INFO", "json"):
        get_task_logger("myapp").info("brokers", urls=["amqp://u:secret@a//", "amqp://b//"])

    err = capsys.readouterr().err
    assert "amqp://b//" in err
    assert "secret" not in err
