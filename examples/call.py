"""Call the example tasks and print their results (run a worker first)."""

import asyncio

from examples.tasks import add, app, count_to, div, slow_hello


def main():
    print("add(2, 2) =", add.delay(2, 2).get(timeout=10))
    try:
        div.delay(1, 0).get(timeout=10)
    except ZeroDivisionError as exc:
        print("div(1, 0) raised ZeroDivisionError:", exc)
    count_to.delay(3).get(
        timeout=10, on_message=lambda body: print("  state:", body["status"], body["result"])
    )
    print("slow_hello =", slow_hello.delay("world").get(timeout=10))

    async def from_asyncio():
        try:
            result = await add.adelay(20, 22)
            return await result
        finally:
            await app.aclose()

    print("from asyncio, add(20, 22) =", asyncio.run(from_asyncio()))
    app.close()


if __name__ == "__main__":
    main()
