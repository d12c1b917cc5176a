"""Short blocking calls in one thread, results handed back in batches (asyncdl/_batch.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest

import asyncdl._batch as batch


def batch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == batch.THREAD_NAME]


async def test_results_and_errors_come_back_to_their_callers() -> None:
    def square(n: int) -> int:
        if n == 13:
            raise ValueError("unlucky")
        return n * n

    outcomes = await asyncio.gather(*(batch.run(square, n) for n in range(100)), return_exceptions=True)
    assert [o for i, o in enumerate(outcomes) if i != 13] == [n * n for n in range(100) if n != 13]
    assert isinstance(outcomes[13], ValueError)


async def test_the_calls_run_in_one_other_thread() -> None:
    names = await asyncio.gather(*(batch.run(lambda: threading.current_thread().name) for _ in range(50)))
    assert set(names) == {batch.THREAD_NAME}


async def test_a_call_whose_caller_was_cancelled_before_it_ran_is_skipped() -> None:
    gate = threading.Event()
    ran: list[str] = []
    first = batch.run(gate.wait, 30)  # holds the thread until the second call is cancelled
    second = batch.run(ran.append, "second")
    second.cancel()
    gate.set()
    assert await first is True
    assert await batch.run(ran.append, "third") is None  # runs after the skipped one
    assert ran == ["third"]


def test_calls_from_two_event_loops_each_get_their_results() -> None:
    results: dict[str, list[int]] = {}

    def run_loop(name: str, base: int) -> None:
        async def main() -> list[int]:
            return list(await asyncio.gather(*(batch.run(int, base + i) for i in range(200))))

        results[name] = asyncio.run(main())

    threads = [threading.Thread(target=run_loop, args=(name, base)) for name, base in (("a", 0), ("b", 1000))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == {"a": list(range(200)), "b": list(range(1000, 1200))}


async def test_the_thread_ends_when_idle_and_starts_again_on_demand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch, "IDLE_SECONDS", 0.01)
    assert await batch.run(int, "1") == 1
    for thread in batch_threads():
        thread.join(timeout=30)
    assert batch_threads() == []
    assert await batch.run(int, "2") == 2  # a new thread
