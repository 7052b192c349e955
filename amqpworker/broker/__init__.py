"""Broker plumbing: the only layer that imports aio-pika."""

from . import chord, declare
from .connection import Broker, Delivery, Outgoing

__all__ = ["Broker", "Delivery", "Outgoing", "chord", "declare"]
