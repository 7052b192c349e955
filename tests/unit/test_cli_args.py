"""CLI argument errors: reported by click with exit code 2, before any broker is touched."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest
from click.testing import CliRunner, Result

from amqpworker import App, cli
from amqpworker.cli import main

Invoke = Callable[..., Result]


@pytest.fixture
def invoke(repo_root: Path, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    """Run the CLI in-process from the repository root, where ``examples`` imports.

    Every case here must stop at argument checking; should one get further, it fails
    at once instead of configuring logging, starting a worker or publishing.
    """
    monkeypatch.chdir(repo_root)
    monkeypatch.syspath_prepend(str(repo_root))

    def got_past_argument_checks(*args: object, **kwargs: object) -> NoReturn:
        pytest.fail("the command got past argument checking")

    monkeypatch.setattr(cli, "configure_logging", got_past_argument_checks)
    monkeypatch.setattr(cli, "Worker", got_past_argument_checks)
    monkeypatch.setattr(App, "send_task", got_past_argument_checks)

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    return run


def test_help_lists_the_commands(invoke: Invoke) -> None:
    result = invoke("--help")

    assert result.exit_code == 0
    assert "serve" in result.output
    assert "call" in result.output


@pytest.mark.parametrize("command", ["serve", "call"])
def test_command_help(invoke: Invoke, command: str) -> None:
    result = invoke(command, "--help")

    assert result.exit_code == 0
    assert "-A, --app" in result.output


def test_serve_without_app_is_a_usage_error(invoke: Invoke) -> None:
    result = invoke("serve")

    assert result.exit_code == 2
    assert "Missing option '-A' / '--app'" in result.output


def test_serve_with_a_module_that_does_not_import(invoke: Invoke) -> None:
    result = invoke("serve", "-A", "nosuchmodule_for_amqpworker")

    assert result.exit_code == 2
    assert "Invalid value for '-A' / '--app'" in result.output
    assert "cannot import 'nosuchmodule_for_amqpworker'" in result.output


def test_serve_with_an_attribute_that_is_not_an_app(invoke: Invoke) -> None:
    result = invoke("serve", "-A", "examples.tasks:add")

    assert result.exit_code == 2
    assert "'examples.tasks:add' is not an amqpworker App" in result.output


def test_serve_with_an_empty_queue_name(invoke: Invoke) -> None:
    result = invoke("serve", "-A", "examples.tasks", "-Q", "a,,b")

    assert result.exit_code == 2
    assert "Invalid value for '-Q' / '--queues'" in result.output
    assert "'a,,b' has an empty queue name" in result.output


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--concurrency", "0", "'-c' / '--concurrency'"),
        ("--pool", "fork", "'-P' / '--pool'"),
        ("--prefetch-multiplier", "0", "'--prefetch-multiplier'"),
        ("--loglevel", "LOUD", "'-l' / '--loglevel'"),
        ("--shutdown-timeout", "-1", "'--shutdown-timeout'"),
    ],
)
def test_serve_bad_option_values(invoke: Invoke, option: str, value: str, named: str) -> None:
    result = invoke("serve", "-A", "examples.tasks", option, value)

    assert result.exit_code == 2
    assert f"Invalid value for {named}" in result.output


def test_call_with_args_that_are_not_json(invoke: Invoke) -> None:
    result = invoke("call", "-A", "examples.tasks", "examples.tasks.add", "--args", "{bad")

    assert result.exit_code == 2
    assert "Invalid value for '--args'" in result.output
    assert "'{bad' is not JSON" in result.output


def test_call_with_args_that_are_not_a_list(invoke: Invoke) -> None:
    result = invoke("call", "-A", "examples.tasks", "examples.tasks.add", "--args", '{"x": 1}')

    assert result.exit_code == 2
    assert "must be a JSON list" in result.output


def test_call_with_kwargs_that_are_not_an_object(invoke: Invoke) -> None:
    result = invoke("call", "-A", "examples.tasks", "examples.tasks.add", "--kwargs", "[1]")

    assert result.exit_code == 2
    assert "Invalid value for '--kwargs'" in result.output
    assert "must be a JSON dict" in result.output


def test_call_without_task_name(invoke: Invoke) -> None:
    result = invoke("call", "-A", "examples.tasks")

    assert result.exit_code == 2
    assert "Missing argument 'NAME'" in result.output
