"""Publishing a task again to the queue it came from, delayed if its eta says so.

An early message and a retry both go back this way, through the delay levels: a
worker never holds a delayed message.
"""

from __future__ import annotations

from ...app.publisher import Publisher
from ...app.routing import Destination
from ...broker import Delivery
from ...wire import TaskMessage


async def publish_again(publisher: Publisher, delivery: Delivery, message: TaskMessage) -> None:
    serializer = publisher.serializers.get(delivery.envelope.content_type or "json")
    destination = Destination("", delivery.queue, delivery.queue, message.priority)
    await publisher.publish_tasks([(message, destination, serializer)])
