"""Settling a delivery: ack, requeue, dead-letter, and counting redeliveries.

Every way a delivery can end is here, so that the rules hold everywhere: an ack or a
reject goes to the channel that delivered (a closed one means the broker redelivers),
and nothing is rejected into a dead-letter queue that may not exist.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING

from ..broker import Broker, Delivery
from ..exceptions import DeliveryLost
from ..log import get_logger
from ..topology import QueueSpec, Topology, dlq_name
from ..wire import deadletter

if TYPE_CHECKING:
    from .stats import WorkerStats

log = get_logger(__name__)

#: Messages whose reason for being put back this worker remembers.
REQUEUE_MEMORY = 10_000


class Settler:
    """Ends deliveries for one worker, through its publishing broker connection."""

    def __init__(self, broker: Broker, stats: WorkerStats, topology: Topology) -> None:
        self.broker = broker
        self.stats = stats
        self.topology = topology
        #: Why this worker put messages back, by message id, for the count to carry.
        self._requeued_because: OrderedDict[str, str] = OrderedDict()

    async def count_redelivery(self, delivery: Delivery, spec: QueueSpec | None) -> bool:
        """Count deliveries on classic queues; True when the delivery was dealt with here.

        RabbitMQ tells a classic-queue consumer only *that* a message was redelivered,
        not how often, so a message whose task kills the worker would loop forever. The
        count travels in a header: the redelivered message is republished (confirmed)
        with the count raised, then acked, and the copy is what runs next. Past the
        queue's delivery limit it is dead-lettered as crash-looping instead. Quorum
        queues count by themselves (``x-delivery-limit``), so they skip this.
        """
        spec = spec or self.topology.queue(delivery.queue)
        if spec.type == "quorum":
            return False
        envelope = delivery.envelope
        known = envelope.headers.get(deadletter.DELIVERIES)
        deliveries = (known if isinstance(known, int) and known > 0 else 1) + 1
        limit = spec.effective_delivery_limit
        # A worker that put it back on purpose said why; only an unexplained
        # redelivery (the worker died or lost its connection) may be a crash.
        because = self._requeued_because.pop(envelope.message_id or "", None)
        if because is None:
            recorded = envelope.headers.get(deadletter.REQUEUED_BECAUSE)
            because = recorded if isinstance(recorded, str) else None
        if deliveries > limit:
            if because is not None:
                await self.dead_letter(
                    delivery,
                    because,
                    f"put back {deliveries - 1} times by workers ({because}); limit {limit}",
                )
            else:
                await self.dead_letter(
                    delivery,
                    "crash-looping",
                    f"delivered {deliveries} times without being acknowledged (limit {limit});"
                    " its task may be killing the worker",
                )
            return True
        headers = {**envelope.headers, deadletter.DELIVERIES: deliveries}
        if because is not None:
            headers[deadletter.REQUEUED_BECAUSE] = because
        else:
            headers.pop(deadletter.REQUEUED_BECAUSE, None)
        try:
            await self.broker.publish(
                replace(delivery.envelope, headers=headers), "", delivery.queue
            )
        except Exception as exc:
            log.warning("could not count a redelivery; running it as is", error=str(exc))
            return False
        # The copy may be delivered to us next and kill us too: the original's ack must
        # have reached the broker by then, or both would come back.
        try:
            await delivery.ack_for_sure()
        except DeliveryLost as exc:
            log.warning("ack not confirmed", reason=str(exc))
        return True

    async def ack(self, delivery: Delivery) -> None:
        try:
            await delivery.ack()
        except DeliveryLost as exc:
            log.warning("ack not sent", reason=str(exc))

    async def requeue(self, delivery: Delivery, because: str | None = None) -> None:
        """Put a delivery back in its queue.

        ``because`` names a known cause (a publish that failed); if the message keeps
        coming back for it, it is dead-lettered under that reason, not as crash-looping.
        """
        self.stats.requeued += 1
        message_id = delivery.envelope.message_id
        if because is not None and message_id:
            self._requeued_because[message_id] = because
            if len(self._requeued_because) > REQUEUE_MEMORY:
                self._requeued_because.popitem(last=False)
        with contextlib.suppress(DeliveryLost):
            await delivery.reject(requeue=True)

    async def dead_letter(
        self, delivery: Delivery, reason: str, detail: str, exception: str | None = None
    ) -> None:
        """Copy the message into ``<queue>.dlq`` with the reason, then ack the original."""
        envelope = delivery.envelope
        headers = deadletter.dead_letter_headers(
            envelope.headers,
            reason=reason,
            detail=detail,
            queue=delivery.queue,
            exchange=delivery.exchange,
            routing_key=delivery.routing_key,
            exception=exception,
        )
        log.error(
            "message dead-lettered",
            reason=reason,
            detail=detail,
            queue=delivery.queue,
            message_id=envelope.message_id,
            dead_letter_queue=dlq_name(delivery.queue),
        )
        copy = replace(envelope, headers=headers)
        broker = self.broker
        if not broker.fits_in_a_frame(copy):
            # Its own headers nearly fill a frame: the reason alone, else the broker's
            # own dead-lettering (x-death says "rejected"), which needs no new frame.
            copy = replace(envelope, headers={**envelope.headers, deadletter.REASON: reason})
            if not broker.fits_in_a_frame(copy):
                log.warning("headers too large to copy; rejecting into the DLQ instead")
                with contextlib.suppress(DeliveryLost):
                    await delivery.reject(requeue=False)
                self.stats.count_dead_letter(reason)
                return
        try:
            await broker.publish(copy, "", dlq_name(delivery.queue))
        except Exception as first:
            # The DLQ may have been deleted under us: declare it again and retry once.
            log.warning("dead-letter copy failed; declaring the DLQ again", error=str(first))
            try:
                await broker.declare_dlq(self.topology.queue(delivery.queue))
                await broker.publish(copy, "", dlq_name(delivery.queue))
            except Exception as second:
                # Rejecting now could drop it (its dead-letter target is what failed), so
                # it goes back to its queue, where it stays visible until the DLQ works.
                log.error("cannot dead-letter; message returned to its queue", error=str(second))
                await self.requeue(delivery)
                return
        self.stats.count_dead_letter(reason)
        await self.ack(delivery)
