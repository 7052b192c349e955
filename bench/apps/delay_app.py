"""The delay benchmark's app: ``amqpworker serve -A bench.apps.delay_app``.

Broker and queue come from ``AMQPWORKER_BROKER_URL`` and ``AMQPWORKER_TASK_DEFAULT_QUEUE``
(``python -m bench.delays`` points them at its private node).

- ``delay_app.hold``: the hour-long task; it is never meant to run during the benchmark.
- ``delay_app.clock``: returns ``[time.time(), eta]`` when it runs: the run time and the
  eta the message carried, so lateness is measured against the exact eta.
"""

import time

from amqpworker import App

app = App("delay_app")


@app.task(name="delay_app.hold", ignore_result=True)
def hold() -> None:
    return None


@app.task(name="delay_app.clock", bind=True)
def clock(self) -> list:  # type: ignore[no-untyped-def]
    return [time.time(), self.request.eta]
