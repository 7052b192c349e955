"""Settings: defaults, environment overrides, validation errors that name the setting."""

from __future__ import annotations

import os

import pytest

from amqpworker import App, ImproperlyConfigured
from amqpworker.settings import DEFAULT_BROKER_URL, Route

SECRET_URL = "amqp://u:secret@h//"


# Defaults.


def test_defaults_match_the_documented_values() -> None:
    conf = App("defaults").conf

    assert conf.broker_url == [DEFAULT_BROKER_URL]
    assert conf.result_backend == "rpc://"
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert conf.accept_content == ["json", "msgpack", "yaml"]
    assert "pickle" not in conf.accept_content
    assert conf.task_default_queue == "amqpworker"
    assert conf.task_default_exchange == ""
    assert conf.task_default_routing_key is None
    assert conf.task_default_priority is None
    assert conf.task_queue_max_priority == 10
    assert conf.task_routes == {}
    assert conf.task_acks_late is True
    assert conf.task_ignore_result is False
    assert conf.task_track_started is False
    assert conf.task_max_retries == 3
    assert conf.task_default_retry_delay == 180.0
    assert conf.task_always_eager is False
    assert conf.result_expires == 86400.0
    assert conf.timezone == "UTC"
    assert conf.enable_utc is True
    assert conf.worker_concurrency == (os.cpu_count() or 1)
    assert conf.worker_prefetch_multiplier == 4
    assert conf.worker_pool == "threads"
    assert conf.include == []
    assert conf.worker_metrics_port is None
    assert conf.worker_metrics_host == "0.0.0.0"
    assert conf.worker_health_loop_timeout == 10.0


def test_app_keywords_set_broker_backend_include_and_any_setting() -> None:
    app = App(
        "kw",
        broker="amqp://a//",
        backend="rpc",
        include=["pkg.tasks"],
        task_serializer="msgpack",
    )

    assert app.main == "kw"
    assert app.conf.broker_url == ["amqp://a//"]
    assert app.conf.result_backend == "rpc://"
    assert app.conf.include == ["pkg.tasks"]
    assert app.conf.task_serializer == "msgpack"


# broker_url shapes.


def test_broker_url_as_list_keeps_order() -> None:
    app = App(broker=["amqp://a//", "amqps://b//"])

    assert app.conf.broker_url == ["amqp://a//", "amqps://b//"]


def test_broker_url_semicolon_string_is_split_and_stripped() -> None:
    app = App(broker="amqp://a// ; amqp://b//;")

    assert app.conf.broker_url == ["amqp://a//", "amqp://b//"]


def test_broker_url_semicolon_string_by_assignment() -> None:
    app = App()

    app.conf.broker_url = "amqp://a//;amqp://b//"

    assert app.conf.broker_url == ["amqp://a//", "amqp://b//"]


@pytest.mark.parametrize("value", ["", " ; ", []])
def test_broker_url_needs_at_least_one_url(value: object) -> None:
    with pytest.raises(ImproperlyConfigured, match="broker_url") as info:
        App(broker=value)  # type: ignore[arg-type]

    assert "at least one broker URL" in str(info.value)


def test_broker_url_must_be_amqp() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"broker_url.*not an amqp:// or amqps:// URL"):
        App(broker="redis://localhost:6379/0")


# Environment variables.


def test_env_overrides_defaults_when_the_app_is_created(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQPWORKER_WORKER_CONCURRENCY", "3")
    monkeypatch.setenv("AMQPWORKER_TASK_TRACK_STARTED", "true")
    monkeypatch.setenv("AMQPWORKER_TASK_ROUTES", '{"a.*": {"queue": "qa"}}')

    conf = App().conf

    assert conf.worker_concurrency == 3
    assert conf.task_track_started is True
    assert conf.task_routes == {"a.*": Route(queue="qa")}


def test_env_is_read_at_app_creation_not_later(monkeypatch: pytest.MonkeyPatch) -> None:
    before = App()
    monkeypatch.setenv("AMQPWORKER_TASK_DEFAULT_QUEUE", "from-env")

    after = App()

    assert before.conf.task_default_queue == "amqpworker"
    assert after.conf.task_default_queue == "from-env"


def test_explicit_values_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQPWORKER_WORKER_CONCURRENCY", "3")
    monkeypatch.setenv("AMQPWORKER_BROKER_URL", "amqp://env//")

    app = App(broker="amqp://code//", worker_concurrency=7)

    assert app.conf.worker_concurrency == 7
    assert app.conf.broker_url == ["amqp://code//"]


def test_env_broker_url_is_split_on_semicolons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQPWORKER_BROKER_URL", "amqp://a//; amqp://b//")

    assert App().conf.broker_url == ["amqp://a//", "amqp://b//"]


def test_bad_env_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQPWORKER_WORKER_CONCURRENCY", "lots")

    with pytest.raises(ImproperlyConfigured, match="'worker_concurrency'") as info:
        App()

    assert "'lots'" in str(info.value)


def test_other_amqpworker_variables_do_not_break_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    # AMQPWORKER_APP is the CLI's -A variable; AMQPWORKER_CONFIG_MODULE is the documented
    # config_from_envvar example. Neither is a setting.
    monkeypatch.setenv("AMQPWORKER_APP", "examples.tasks")
    monkeypatch.setenv("AMQPWORKER_CONFIG_MODULE", "myapp.settings")

    assert App().conf.broker_url == [DEFAULT_BROKER_URL]


# Validation errors name the setting.


def test_unknown_setting_in_app_keywords() -> None:
    with pytest.raises(ImproperlyConfigured, match="unknown setting 'brokr_url'"):
        App(brokr_url="amqp://a//")


def test_unknown_setting_suggests_the_close_name(app: App) -> None:
    with pytest.raises(ImproperlyConfigured, match="did you mean 'worker_concurrency'"):
        app.conf.update(worker_concurency=2)


def test_unknown_setting_by_assignment(app: App) -> None:
    with pytest.raises(ImproperlyConfigured, match="unknown setting 'no_such_thing'"):
        app.conf.no_such_thing = 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("worker_concurrency", "many"),
        ("worker_concurrency", 0),
        ("task_default_priority", 300),
        ("task_acks_late", "perhaps"),
        ("worker_pool", "prefork"),
        ("task_default_rate_limit", "fast"),
        ("result_expires", -1),
        ("worker_metrics_port", 70000),
        ("worker_metrics_port", "nine"),
        ("worker_health_loop_timeout", 0),
    ],
)
def test_wrong_value_names_the_setting_everywhere(app: App, name: str, value: object) -> None:
    before = getattr(app.conf, name)

    with pytest.raises(ImproperlyConfigured, match=f"'{name}'"):
        App(**{name: value})
    with pytest.raises(ImproperlyConfigured, match=f"'{name}'"):
        setattr(app.conf, name, value)
    with pytest.raises(ImproperlyConfigured, match=f"'{name}'"):
        app.conf.update({name: value})

    assert getattr(app.conf, name) == before


def test_assignment_and_update_apply_valid_values(app: App) -> None:
    app.conf.timezone = "Asia/Shanghai"
    app.conf.update({"result_expires": 3600}, task_track_started=True)

    assert app.conf.timezone == "Asia/Shanghai"
    assert app.conf.result_expires == 3600.0
    assert app.conf.task_track_started is True


def test_update_is_all_or_nothing_on_a_bad_value(app: App) -> None:
    with pytest.raises(ImproperlyConfigured, match="'timezone'"):
        app.conf.update(worker_concurrency=2, task_default_queue="other", timezone="Nowhere/Land")

    assert app.conf.worker_concurrency == (os.cpu_count() or 1)
    assert app.conf.task_default_queue == "amqpworker"
    assert app.conf.timezone == "UTC"


def test_update_is_all_or_nothing_on_an_unknown_name(app: App) -> None:
    with pytest.raises(ImproperlyConfigured, match="unknown setting 'bogus'"):
        app.conf.update(task_default_queue="other", bogus=1)

    assert app.conf.task_default_queue == "amqpworker"


@pytest.mark.parametrize("backend", ["redis://localhost", "amqp://", "db+sqlite:///x.db"])
def test_result_backend_other_than_rpc_is_rejected(backend: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"'result_backend'.*rpc://"):
        App(backend=backend)


def test_bad_timezone_is_rejected(app: App) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"'timezone'.*unknown time zone 'Mars/Olympus'"):
        app.conf.timezone = "Mars/Olympus"


def test_empty_route_pattern_is_rejected() -> None:
    with pytest.raises(ImproperlyConfigured, match="task_routes"):
        App(task_routes={"": {"queue": "q"}})


def test_route_with_unknown_key_names_the_route() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"task_routes\.a\.b\.queu"):
        App(task_routes={"a.b": {"queu": "q"}})


# Routes.


def test_route_for_exact_name_beats_an_earlier_glob() -> None:
    conf = App(
        task_routes={
            "app.*": {"queue": "by-glob"},
            "app.add": {"queue": "exact"},
        }
    ).conf

    assert conf.route_for("app.add") == Route(queue="exact")
    assert conf.route_for("app.mul") == Route(queue="by-glob")
    assert conf.route_for("other.add") is None


def test_route_for_first_matching_glob_wins() -> None:
    conf = App(
        task_routes={
            "app.img_*": {"queue": "images"},
            "app.*": {"queue": "general"},
        }
    ).conf

    assert conf.route_for("app.img_resize").queue == "images"
    assert conf.route_for("app.send").queue == "general"


# Passwords never appear in error messages.


@pytest.mark.parametrize(
    "values",
    [
        {"broker_url": [SECRET_URL, "ftp://x"]},
        {"worker_concurrency": SECRET_URL},
        {"worker_pool": SECRET_URL},
        {"task_routes": {"a": {"queue": "q", "bad": SECRET_URL}}},
    ],
)
def test_password_is_hidden_in_setting_errors(values: dict[str, object]) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        App(**values)

    message = str(info.value)
    assert next(iter(values)) in message
    assert "secret" not in message
    assert "amqp://u:****@h//" in message  # the bad value is still shown, scrubbed


@pytest.mark.parametrize(
    "name",
    # result_backend='amqp://user:pass@host//' is exactly how Celery's old amqp backend
    # was configured, so users porting from Celery will hit this.
    ["result_backend", "timezone", "task_default_rate_limit"],
)
def test_password_is_hidden_when_the_validator_repeats_the_value(name: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=f"'{name}'") as info:
        App(**{name: SECRET_URL})

    assert "secret" not in str(info.value)


def test_password_is_hidden_for_a_non_amqp_broker_url() -> None:
    with pytest.raises(ImproperlyConfigured, match="'broker_url'") as info:
        App(broker="redis://u:secret@h:6379/0")

    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("task_always_eager", True),
    ],
)
def test_a_setting_not_acted_on_yet_is_refused_not_ignored(name: str, value: object) -> None:
    with pytest.raises(ImproperlyConfigured, match=f"'{name}'.*not (enforced|built) yet"):
        App(**{name: value})


def test_per_child_limits_need_the_process_pool() -> None:
    from amqpworker.worker import Worker

    app = App(worker_max_tasks_per_child=10)
    with pytest.raises(ValueError, match="worker_max_tasks_per_child applies to the process pool"):
        Worker(app)
