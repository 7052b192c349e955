"""The delivery pipeline: steps in order, one place that ends a delivery, nothing left unsettled."""

from __future__ import annotations

from typing import Any, cast

from amqpworker.worker.pipeline import DeadLetter, Job, Requeue, Step, compose
from amqpworker.worker.settle import Settler
from amqpworker.worker.steps.acks import Acknowledge


class FakeDelivery:
    def __init__(self) -> None:
        self.envelope = type("E", (), {"message_id": "m1"})()
        self.settled = False


class RecordingSettler:
    """Stands in for the Settler: records how each delivery ended."""

    def __init__(self) -> None:
        self.ended: list[tuple[str, Any]] = []

    async def ack(self, delivery: Any) -> None:
        self.ended.append(("ack", None))

    async def requeue(self, delivery: Any, because: str | None = None) -> None:
        self.ended.append(("requeue", because))

    async def dead_letter(
        self, delivery: Any, reason: str, detail: str, exception: str | None = None
    ) -> None:
        self.ended.append(("dead_letter", (reason, detail, exception is not None)))


class Record(Step):
    def __init__(self, name: str, seen: list[str]) -> None:
        self.name, self.seen = name, seen

    async def __call__(self, job: Job) -> None:
        self.seen.append(f"{self.name} in")
        await self.proceed(job)
        self.seen.append(f"{self.name} out")


class Stop(Step):
    def __init__(self, ending: Any) -> None:
        self.ending = ending

    async def __call__(self, job: Job) -> None:
        job.ending = self.ending


class Broken(Step):
    async def __call__(self, job: Job) -> None:
        raise KeyError("a bug")


def _run(*steps: Step) -> RecordingSettler:
    import asyncio

    settler = RecordingSettler()
    handle = compose([Acknowledge(cast(Settler, settler)), *steps])
    asyncio.run(handle(Job(cast(Any, FakeDelivery()))))
    return settler


def test_steps_run_in_order_and_unwind_in_reverse() -> None:
    seen: list[str] = []
    settler = _run(Record("a", seen), Record("b", seen))
    assert seen == ["a in", "b in", "b out", "a out"]
    assert settler.ended == [("ack", None)]


def test_a_step_that_stops_decides_how_the_delivery_ends() -> None:
    seen: list[str] = []
    settler = _run(Stop(DeadLetter("malformed", "why")), Record("never", seen))
    assert seen == []
    assert settler.ended == [("dead_letter", ("malformed", "why", False))]
    assert _run(Stop(Requeue("delay-not-published"))).ended == [("requeue", "delay-not-published")]
    assert _run(Stop(None)).ended == []  # settled by the step itself


def test_an_unexpected_error_dead_letters_instead_of_leaving_it_unsettled() -> None:
    settler = _run(Broken())
    assert settler.ended == [("dead_letter", ("worker-error", "KeyError: 'a bug'", True))]
