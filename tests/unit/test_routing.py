"""Routing and App.prepare: where a call goes and what message it becomes, without I/O."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest

from amqpworker import App, ImproperlyConfigured, Request
from amqpworker.app.routing import Destination, resolve_destination
from amqpworker.app.task import current_request
from amqpworker.settings import Route, load_settings


def route(**values: Any) -> Route:
    return Route(**values)


# resolve_destination.


def test_defaults_go_to_the_default_queue_through_the_default_exchange(app: App) -> None:
    assert resolve_destination(app.conf, "t", route(), route()) == Destination(
        "", "amqpworker", "amqpworker", None
    )


def test_changed_default_queue() -> None:
    conf = App(task_default_queue="work").conf

    assert resolve_destination(conf, "t", route(), route()) == Destination("", "work", "work", None)


def test_default_exchange_setting_with_default_routing_key() -> None:
    conf = App(task_default_exchange="tasks", task_default_routing_key="task.default").conf

    dest = resolve_destination(conf, "t", route(), route())

    assert dest == Destination("tasks", "task.default", None, None)


def test_bare_queue_uses_default_exchange_with_queue_as_routing_key(app: App) -> None:
    dest = resolve_destination(app.conf, "t", route(queue="images"), route())

    assert dest == Destination("", "images", "images", None)


def test_exchange_with_routing_key(app: App) -> None:
    dest = resolve_destination(
        app.conf, "t", route(exchange="tasks", routing_key="tasks.image"), route()
    )

    assert dest == Destination("tasks", "tasks.image", None, None)


def test_exchange_without_routing_key_uses_the_queue_name(app: App) -> None:
    dest = resolve_destination(app.conf, "t", route(exchange="tasks", queue="images"), route())

    assert dest == Destination("tasks", "images", None, None)


def test_exchange_alone_routes_by_task_name(app: App) -> None:
    dest = resolve_destination(app.conf, "app.resize", route(exchange="tasks"), route())

    assert dest == Destination("tasks", "app.resize", None, None)


def test_call_beats_task_beats_route_beats_default() -> None:
    conf = App(task_routes={"app.t": {"queue": "from-route", "priority": 1}}).conf
    call = route(queue="from-call", priority=9)
    task = route(queue="from-task", priority=5)

    assert resolve_destination(conf, "app.t", call, task) == Destination(
        "", "from-call", "from-call", 9
    )
    assert resolve_destination(conf, "app.t", route(), task) == Destination(
        "", "from-task", "from-task", 5
    )
    assert resolve_destination(conf, "app.t", route(), route()) == Destination(
        "", "from-route", "from-route", 1
    )
    assert resolve_destination(conf, "app.other", route(), route()).queue == "amqpworker"


def test_route_exact_name_beats_glob() -> None:
    conf = App(
        task_routes={
            "app.*": {"queue": "glob"},
            "app.add": {"exchange": "math", "routing_key": "math.add"},
        }
    ).conf

    assert resolve_destination(conf, "app.add", route(), route()) == Destination(
        "math", "math.add", None, None
    )
    assert resolve_destination(conf, "app.sub", route(), route()).queue == "glob"


@pytest.mark.parametrize(
    ("call", "task", "routed", "default", "expected"),
    [
        (7, 5, 3, 1, 7),
        (None, 5, 3, 1, 5),
        (None, None, 3, 1, 3),
        (None, None, None, 1, 1),
        (None, None, None, None, None),
        (0, 5, 3, 1, 0),  # 0 is a priority, not "unset"
    ],
)
def test_priority_precedence(
    call: int | None, task: int | None, routed: int | None, default: int | None, expected: int
) -> None:
    routes = {"t": {"priority": routed}} if routed is not None else {}
    conf = App(task_routes=routes, task_default_priority=default).conf

    dest = resolve_destination(conf, "t", route(priority=call), route(priority=task))

    assert dest.priority == expected


# App.prepare.


def test_prepare_builds_message_destination_and_serializer(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    message, dest, serializer = app.prepare(add.name, (1, 2), {"z": 3}, add, {})

    assert message.task == add.name
    assert message.args == (1, 2)
    assert message.kwargs == {"z": 3}
    assert message.id
    assert message.root_id is None
    assert message.parent_id is None
    assert message.reply_to is None
    assert message.ignore_result is False
    assert dest == Destination("", "amqpworker", "amqpworker", None)
    assert serializer.name == "json"


def test_prepare_gives_each_call_a_new_id_unless_task_id_is_given(app: App) -> None:
    first, _, _ = app.prepare("t", None, None, None, {})
    second, _, _ = app.prepare("t", None, None, None, {})
    chosen, _, _ = app.prepare("t", None, None, None, {"task_id": "my-id"})

    assert first.id != second.id
    assert chosen.id == "my-id"


def test_prepare_uses_registered_task_options_when_called_by_name(app: App) -> None:
    @app.task(queue="math", priority=4)
    def mul(x: int, y: int) -> int:
        return x * y

    _, dest, _ = app.prepare(mul.name, (1, 2), None, None, {})

    assert dest == Destination("", "math", "math", 4)


def test_prepare_call_options_beat_task_options(app: App) -> None:
    @app.task(queue="math", priority=4)
    def mul(x: int, y: int) -> int:
        return x * y

    message, dest, _ = app.prepare(mul.name, (), None, mul, {"queue": "urgent", "priority": 9})

    assert dest == Destination("", "urgent", "urgent", 9)
    assert message.priority == 9


def test_prepare_task_options_beat_task_routes() -> None:
    app = App(task_routes={"app.*": {"queue": "routed", "priority": 2}})
    task = app.task(name="app.job", queue="own")(lambda: None)

    _, dest, _ = app.prepare("app.job", (), None, task, {})

    assert dest == Destination("", "own", "own", 2)


def test_prepare_unregistered_name_is_routed_by_task_routes() -> None:
    app = App(task_routes={"remote.*": {"exchange": "remote", "routing_key": "rk"}})

    _, dest, _ = app.prepare("remote.job", (), None, None, {})

    assert dest == Destination("remote", "rk", None, None)


@pytest.mark.parametrize(
    ("call", "task", "setting", "expected"),
    [
        ("yaml", "msgpack", "json", "yaml"),
        (None, "msgpack", "json", "msgpack"),
        (None, None, "yaml", "yaml"),
    ],
)
def test_prepare_serializer_choice(
    call: str | None, task: str | None, setting: str, expected: str
) -> None:
    app = App(task_serializer=setting)
    job = app.task(name="job", serializer=task)(lambda: None)
    options = {"serializer": call} if call else {}

    _, _, serializer = app.prepare("job", (), None, job, options)

    assert serializer.name == expected


def test_prepare_unknown_serializer_is_improperly_configured(app: App) -> None:
    with pytest.raises(ImproperlyConfigured, match="unknown serializer 'xml'"):
        app.prepare("job", (), None, None, {"serializer": "xml"})


@pytest.mark.parametrize(
    ("call", "task", "setting", "expected"),
    [
        (True, False, False, True),
        (False, True, True, False),
        (None, True, False, True),
        (None, False, True, False),
        (None, None, True, True),
        (None, None, False, False),
    ],
)
def test_prepare_ignore_result_choice_and_reply_to(
    call: bool | None, task: bool | None, setting: bool, expected: bool
) -> None:
    app = App(task_ignore_result=setting)
    job = app.task(name="job", ignore_result=task)(lambda: None)
    options = {"ignore_result": call} if call is not None else {}

    message, _, serializer = app.prepare("job", (), None, job, options)
    # asend_task adds the client's reply queue; encode must drop it if results are ignored.
    envelope = replace(message, reply_to="caller.reply.1").encode(serializer)

    assert message.ignore_result is expected
    assert envelope.reply_to == (None if expected else "caller.reply.1")
    assert envelope.headers["ignore_result"] is expected


def test_prepare_unknown_call_option_is_a_type_error(app: App) -> None:
    with pytest.raises(TypeError, match="unknown option\\(s\\) for job: queu, retry_policy"):
        app.prepare("job", (), None, None, {"queu": "x", "retry_policy": {}})


def test_prepare_countdown_becomes_an_eta(app: App) -> None:
    before = dt.datetime.now(dt.timezone.utc)
    message, _, _ = app.prepare("job", (), None, None, {"countdown": 10})
    assert message.eta is not None
    assert before + dt.timedelta(seconds=10) <= message.eta <= before + dt.timedelta(seconds=11)


def test_prepare_naive_eta_is_in_the_apps_timezone(app: App) -> None:
    app.conf.timezone = "Asia/Shanghai"
    message, _, _ = app.prepare("job", (), None, None, {"eta": dt.datetime(2030, 1, 1, 8, 0)})
    assert message.eta == dt.datetime(2030, 1, 1, 0, 0, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"countdown": 1, "eta": dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)}, "not both"),
        ({"eta": 10}, "eta must be a datetime"),
        ({"countdown": "soon"}, "countdown must be seconds"),
        ({"expires": "later"}, "expires must be seconds"),
    ],
)
def test_prepare_rejects_bad_times(app: App, options: dict[str, Any], problem: str) -> None:
    with pytest.raises(TypeError, match=problem):
        app.prepare("job", (), None, None, options)


def test_prepare_takes_parent_and_root_from_the_current_request(app: App) -> None:
    token = current_request.set(Request(id="parent-id", root_id="root-id", is_eager=False))
    try:
        message, _, _ = app.prepare("child", (), None, None, {})
    finally:
        current_request.reset(token)

    assert message.parent_id == "parent-id"
    assert message.root_id == "root-id"


def test_prepare_outside_a_task_has_no_parent(app: App) -> None:
    message, _, serializer = app.prepare("job", (), None, None, {})
    headers = message.encode(serializer).headers

    assert message.parent_id is None
    assert "parent_id" not in headers
    assert headers["root_id"] == message.id  # a top-level task is its own root


def test_time_limits_travel_in_the_message_and_bad_ones_are_refused() -> None:
    app = App(task_time_limit=60)
    job = app.task(name="job", time_limit=50, soft_time_limit=40)(lambda: None)
    other = app.task(name="other")(lambda: None)

    from_task, _, _ = app.prepare("job", (), None, job, {})
    per_call, _, _ = app.prepare("job", (), None, job, {"soft_time_limit": 5})
    from_settings, _, _ = app.prepare("other", (), None, other, {})

    assert (from_task.time_limit, from_task.soft_time_limit) == (50, 40)
    assert (per_call.time_limit, per_call.soft_time_limit) == (50, 5)
    # The worker's own setting applies: the caller's is not written into messages.
    assert (from_settings.time_limit, from_settings.soft_time_limit) == (None, None)
    with pytest.raises(ImproperlyConfigured, match="'time_limit' must be positive seconds"):
        app.task(name="bad", time_limit=-1)(lambda: None)
    with pytest.raises(TypeError, match="'soft_time_limit' must be positive seconds"):
        app.prepare("job", (), None, job, {"soft_time_limit": "5"})


def test_prepare_expires_in_seconds_or_datetime(app: App) -> None:
    before = dt.datetime.now(dt.timezone.utc)
    relative, _, _ = app.prepare("job", (), None, None, {"expires": 60})
    naive, _, _ = app.prepare("job", (), None, None, {"expires": dt.datetime(2030, 1, 1)})

    assert relative.expires is not None
    assert dt.timedelta(seconds=59) < relative.expires - before <= dt.timedelta(seconds=61)
    assert naive.expires == dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)


def test_prepare_bad_expires_is_a_type_error(app: App) -> None:
    with pytest.raises(TypeError, match="expires must be seconds or a datetime"):
        app.prepare("job", (), None, None, {"expires": "tomorrow"})


@pytest.mark.parametrize("name", ["id", "task", "retries", "x-amqpworker-protocol"])
def test_prepare_refuses_headers_that_are_ours(app: App, name: str) -> None:
    with pytest.raises(TypeError, match=f"'{name}'.*amqpworker's own"):
        app.prepare("job", (), None, None, {"headers": {name: "x", "tenant": "a"}})


def test_prepare_keeps_user_headers(app: App) -> None:
    message, _, serializer = app.prepare("job", (), None, None, {"headers": {"tenant": "a"}})

    assert message.encode(serializer).headers["tenant"] == "a"


def test_a_call_queue_replaces_the_routes_exchange_as_a_whole() -> None:
    conf = load_settings(
        {"task_routes": {"app.resize": {"exchange": "media", "routing_key": "img"}}}
    )
    destination = resolve_destination(conf, "app.resize", Route(queue="urgent"), Route())
    assert destination == Destination("", "urgent", "urgent", None)


def test_a_routing_key_below_the_deciding_layer_is_ignored() -> None:
    conf = load_settings({"task_routes": {"app.resize": {"routing_key": "from.route"}}})
    destination = resolve_destination(conf, "app.resize", Route(exchange="media"), Route())
    assert destination.routing_key == "app.resize"
