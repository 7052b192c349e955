"""An envelope becomes the AMQP properties that are published."""

from __future__ import annotations

from dataclasses import replace

from amqpworker.broker.connection import properties_of
from amqpworker.broker.consumer import envelope_from
from amqpworker.wire import Envelope


def test_properties_carry_the_envelope() -> None:
    envelope = Envelope(
        body=b"[[], {}]",
        headers={"task": "t", "id": "1"},
        content_type="application/json",
        content_encoding="utf-8",
        message_id="1",
        correlation_id="1",
        reply_to="replies",
        priority=7,
        expiration=1.5,
        type="t",
        persistent=True,
    )

    properties = properties_of(envelope)

    assert properties.headers == {"task": "t", "id": "1"}
    assert properties.expiration == "1500"  # milliseconds, as RabbitMQ wants them
    assert properties.delivery_mode == 2
    assert properties.message_type == "t"
    assert properties.priority == 7
    assert properties.reply_to == "replies"
    # And back: what a consumer builds from the same properties is the same envelope.
    # The expiration is left out: it is the broker's to apply, and a copy (a retry, a
    # dead letter) must not inherit it.
    assert envelope_from(properties, envelope.body) == replace(envelope, expiration=None)


def test_transient_messages_and_no_expiration() -> None:
    properties = properties_of(Envelope(body=b"", persistent=False))

    assert properties.delivery_mode == 1
    assert properties.expiration is None
