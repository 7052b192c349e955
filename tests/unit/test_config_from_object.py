"""config_from_object and config_from_envvar: module paths, modules, classes, namespaces."""

from __future__ import annotations

import sys
import textwrap
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from amqpworker import App, ImproperlyConfigured

ModuleFactory = Callable[[str], str]


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleFactory]:
    """Write an importable module with the given source; returns its (unique) name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    created: list[str] = []

    def make(source: str) -> str:
        name = f"cfg_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        created.append(name)
        return name

    yield make
    for name in created:
        sys.modules.pop(name, None)


SETTINGS_SOURCE = """
    import os
    from datetime import timedelta

    broker_url = "amqp://from-module//"
    task_default_queue = "from-module"
    result_expires = 60

    def helper():
        return 1

    class Nested:
        pass

    BROKER_URL = "amqp://upper-case-is-not-read//"
    _private = "ignored"
"""


def test_module_path_string(app: App, make_module: ModuleFactory) -> None:
    name = make_module(SETTINGS_SOURCE)

    app.config_from_object(name)

    assert app.conf.broker_url == ["amqp://from-module//"]
    assert app.conf.task_default_queue == "from-module"
    assert app.conf.result_expires == 60.0


def test_module_path_with_attribute(app: App, make_module: ModuleFactory) -> None:
    name = make_module(
        """
        class Config:
            task_default_queue = "from-class-attr"
        """
    )

    app.config_from_object(f"{name}:Config")

    assert app.conf.task_default_queue == "from-class-attr"


def test_module_object(app: App) -> None:
    module = types.ModuleType("mysettings")
    module.task_default_queue = "from-object"  # type: ignore[attr-defined]
    module.worker_prefetch_multiplier = 1  # type: ignore[attr-defined]

    app.config_from_object(module)

    assert app.conf.task_default_queue == "from-object"
    assert app.conf.worker_prefetch_multiplier == 1


def test_class(app: App) -> None:
    class Config:
        task_default_queue = "from-class"
        task_acks_late = False

        def not_a_setting(self) -> int:
            return 1

    app.config_from_object(Config)

    assert app.conf.task_default_queue == "from-class"
    assert app.conf.task_acks_late is False


def test_instance(app: App) -> None:
    class Config:
        def __init__(self) -> None:
            self.task_default_queue = "from-instance"

    app.config_from_object(Config())

    assert app.conf.task_default_queue == "from-instance"


def test_modules_functions_and_classes_are_skipped(app: App, make_module: ModuleFactory) -> None:
    # SETTINGS_SOURCE has `os` (a module), `timedelta` and `Nested` (classes) and
    # `helper` (a function): none of them is an unknown setting.
    app.config_from_object(make_module(SETTINGS_SOURCE))

    assert app.conf.task_default_queue == "from-module"


def test_upper_case_and_private_names_are_not_read_without_namespace(
    app: App, make_module: ModuleFactory
) -> None:
    app.config_from_object(make_module(SETTINGS_SOURCE))

    assert app.conf.broker_url == ["amqp://from-module//"]


def test_namespace_reads_django_style_names(app: App, make_module: ModuleFactory) -> None:
    name = make_module(
        """
        DEBUG = True
        INSTALLED_APPS = ["django.contrib.admin"]
        AMQPWORKER_BROKER_URL = "amqp://django//"
        AMQPWORKER_TASK_DEFAULT_QUEUE = "django-queue"
        broker_url = "amqp://lower-case-is-not-read//"
        """
    )

    app.config_from_object(name, namespace="AMQPWORKER")

    assert app.conf.broker_url == ["amqp://django//"]
    assert app.conf.task_default_queue == "django-queue"


def test_unknown_lower_case_attribute_names_source_and_setting(
    app: App, make_module: ModuleFactory
) -> None:
    name = make_module(
        """
        task_default_queue = "q"
        task_serialiser = "json"
        """
    )

    with pytest.raises(ImproperlyConfigured) as info:
        app.config_from_object(name)

    message = str(info.value)
    assert f"module {name}" in message
    assert "'task_serialiser'" in message
    assert "did you mean 'task_serializer'" in message
    assert app.conf.task_default_queue == "amqpworker"  # nothing applied


def test_unknown_attribute_in_class_names_the_class(app: App) -> None:
    class MyConfig:
        brokerurl = "amqp://x//"

    with pytest.raises(ImproperlyConfigured, match=r"class .*MyConfig.*'brokerurl'"):
        app.config_from_object(MyConfig)


def test_unknown_namespaced_attribute_names_the_setting(app: App) -> None:
    class DjangoSettings:
        AMQPWORKER_NOT_A_SETTING = 1

    with pytest.raises(ImproperlyConfigured, match="'not_a_setting'"):
        app.config_from_object(DjangoSettings, namespace="AMQPWORKER")


def test_bad_value_names_the_source_and_setting(app: App) -> None:
    class Config:
        worker_concurrency = "lots"

    with pytest.raises(ImproperlyConfigured, match=r"Config.*'worker_concurrency'"):
        app.config_from_object(Config)


def test_missing_module_is_improperly_configured(app: App) -> None:
    with pytest.raises(
        ImproperlyConfigured, match="cannot import settings module 'no_such_cfg_xyz'"
    ):
        app.config_from_object("no_such_cfg_xyz")


def test_missing_attribute_is_improperly_configured(app: App, make_module: ModuleFactory) -> None:
    name = make_module("task_default_queue = 'q'\n")

    with pytest.raises(ImproperlyConfigured, match="has no attribute 'Nope'"):
        app.config_from_object(f"{name}:Nope")


def test_future_import_in_settings_module_is_not_a_setting(
    app: App, make_module: ModuleFactory
) -> None:
    name = make_module(
        """
        from __future__ import annotations

        task_default_queue = "typed-settings"
        """
    )

    app.config_from_object(name)

    assert app.conf.task_default_queue == "typed-settings"


# config_from_envvar.


def test_config_from_envvar_set(
    app: App, make_module: ModuleFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_SETTINGS_MODULE", make_module(SETTINGS_SOURCE))

    app.config_from_envvar("MY_SETTINGS_MODULE")

    assert app.conf.task_default_queue == "from-module"


def test_config_from_envvar_unset(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_SETTINGS_MODULE", raising=False)

    with pytest.raises(ImproperlyConfigured, match="MY_SETTINGS_MODULE is not set"):
        app.config_from_envvar("MY_SETTINGS_MODULE")


def test_config_from_envvar_empty(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SETTINGS_MODULE", "")

    with pytest.raises(ImproperlyConfigured, match="MY_SETTINGS_MODULE is not set"):
        app.config_from_envvar("MY_SETTINGS_MODULE")
