"""Broker plumbing: the only layer that imports aio-pika."""

from .connection import Broker, Delivery, Outgoing
from .topology import dlq_name, work_queue_arguments

__all__ = ["Broker", "Delivery", "Outgoing", "dlq_name", "work_queue_arguments"]
