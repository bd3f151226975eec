"""Micro-batching: concurrent requests share one call and each gets exactly its own rows back."""

from __future__ import annotations

import asyncio

from service.core.batching import MicroBatcher


def test_concurrent_requests_share_calls_and_get_their_rows() -> None:
    calls: list[int] = []

    def run(rows: list[int]) -> list[int]:
        calls.append(len(rows))
        return [r * 10 for r in rows]

    async def main() -> list[list[int]]:
        batcher = MicroBatcher(max_rows=8)
        requests = [list(range(i * 100, i * 100 + n)) for i, n in enumerate((1, 3, 2, 5, 1))]
        return await asyncio.gather(*(batcher.submit("k", rows, run) for rows in requests))

    results = asyncio.run(main())
    assert results == [[r * 10 for r in range(i * 100, i * 100 + n)] for i, n in enumerate((1, 3, 2, 5, 1))]
    assert sum(calls) == 12 and len(calls) == 2  # 1+3+2 fit under 8 rows; 5+1 form the second call


def test_keys_are_never_mixed() -> None:
    seen: list[tuple[str, list[int]]] = []

    def runner(tag: str):
        def run(rows: list[int]) -> list[int]:
            seen.append((tag, rows))
            return rows

        return run

    async def main() -> None:
        batcher = MicroBatcher()
        await asyncio.gather(batcher.submit("a", [1], runner("a")), batcher.submit("b", [2], runner("b")))

    asyncio.run(main())
    assert sorted(seen) == [("a", [1]), ("b", [2])]


def test_an_error_reaches_every_request_of_the_call() -> None:
    def run(rows: list[int]) -> list[int]:
        raise RuntimeError("model failed")

    async def main() -> list[object]:
        batcher = MicroBatcher()
        return await asyncio.gather(
            *(batcher.submit("k", [i], run) for i in range(3)), return_exceptions=True
        )

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and str(r) == "model failed" for r in results)


def test_a_request_parsed_on_the_next_loop_turn_joins_the_call() -> None:
    """uvicorn starts a request's handler from a socket callback, queued behind whatever the loop already
    had: a request whose bytes arrived just after the first one's must still share its call."""
    calls: list[list[int]] = []

    def run(rows: list[int]) -> list[int]:
        calls.append(list(rows))
        return rows

    async def main() -> list[list[int]]:
        batcher = MicroBatcher()
        loop = asyncio.get_running_loop()
        handlers: list[asyncio.Task[list[int]]] = []

        async def first() -> list[int]:
            # Like a socket callback on the next turn, which starts the second request's handler.
            loop.call_soon(lambda: handlers.append(loop.create_task(batcher.submit("k", [2], run))))
            return await batcher.submit("k", [1], run)

        one = await first()
        return [one, await handlers[0]]

    assert asyncio.run(main()) == [[1], [2]]
    assert calls == [[1, 2]]
