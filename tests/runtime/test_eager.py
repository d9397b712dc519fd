"""run_eager: handlers that never suspend finish without a task; others resume correctly."""

import asyncio

import pytest
from ackbus._eager import run_eager

Outcome = tuple[object, BaseException | None]


async def doubled(x: int) -> int:
    return x * 2


async def slow_tripled(x: int) -> int:
    await asyncio.sleep(0.001)
    await asyncio.sleep(0)
    return x * 3


async def fails_at_once() -> None:
    raise ValueError("at once")


async def fails_later() -> None:
    await asyncio.sleep(0)
    raise KeyError("later")


async def catches_cancel(log: list[str]) -> str:
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        log.append("saw cancel")
        raise
    return "unreachable"


def collector() -> tuple[list[Outcome], object]:
    seen: list[Outcome] = []

    def on_done(result: object, error: BaseException | None) -> None:
        seen.append((result, error))

    return seen, on_done


async def test_synchronous_handler_needs_no_task() -> None:
    seen, on_done = collector()
    task = run_eager(doubled(21), on_done, asyncio.get_running_loop())  # type: ignore[arg-type]
    assert task is None
    assert seen == [(42, None)]


async def test_suspending_handler_resumes_in_a_task() -> None:
    seen, on_done = collector()
    task = run_eager(slow_tripled(5), on_done, asyncio.get_running_loop())  # type: ignore[arg-type]
    assert task is not None
    assert seen == []
    async with asyncio.timeout(2):
        assert await task == 15
    assert seen == [(15, None)]


@pytest.mark.parametrize("factory", [fails_at_once, fails_later])
async def test_errors_reach_on_done_never_the_caller(factory: object) -> None:
    seen, on_done = collector()
    task = run_eager(factory(), on_done, asyncio.get_running_loop())  # type: ignore[operator, arg-type]
    if task is not None:
        async with asyncio.timeout(2):
            await asyncio.gather(task, return_exceptions=True)
    [(result, error)] = seen
    assert result is None
    assert isinstance(error, (ValueError, KeyError))


async def test_cancelling_the_task_cancels_the_handler() -> None:
    seen, on_done = collector()
    log: list[str] = []
    task = run_eager(catches_cancel(log), on_done, asyncio.get_running_loop())  # type: ignore[arg-type]
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    async with asyncio.timeout(2):
        await asyncio.gather(task, return_exceptions=True)
    assert log == ["saw cancel"]
    assert isinstance(seen[0][1], asyncio.CancelledError)
