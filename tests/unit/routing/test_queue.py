"""FairQueue: parallel limits, round-robin across keys, bounded waits, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from proxy.errors import NoDeploymentAvailableError
from proxy.routing import FairQueue, Router
from proxy.settings import DeploymentParams, ModelEntry, RouterSettings, Settings


def _queue(limit: int | None = 1, *, max_wait: float = 30.0, max_depth: int = 100) -> FairQueue:
    return FairQueue([("d", limit)], max_wait=max_wait, max_depth=max_depth)


async def _until_waiting(queue: FairQueue, n: int) -> None:
    """Let queued tasks run up to their wait (no timing: counts waiters)."""
    # Waiting is internal state of the queue: there is no event to await.
    while queue.depth() < n:  # noqa: ASYNC110
        await asyncio.sleep(0)


async def test_requests_under_the_limit_do_not_wait() -> None:
    """Up to max_parallel_requests slots are taken at once; releasing gives them back."""
    queue = _queue(2)
    await queue.acquire("d", "k")
    await queue.acquire("d", "k")
    assert (queue.active("d"), queue.depth()) == (2, 0)
    queue.release("d")
    queue.release("d")
    assert queue.active("d") == 0


async def test_a_deployment_without_a_limit_never_queues() -> None:
    """No max_parallel_requests: slot is free, nothing is tracked."""
    queue = _queue(None)
    assert not queue.limited("d")
    async with queue.slot("d", "k"), queue.slot("d", "k"):
        assert queue.depth() == 0


async def test_one_waiter_is_not_starved_by_a_key_with_fifty() -> None:
    """Keys take turns: the lone request of key B is served within the first two."""
    queue = _queue(1)
    await queue.acquire("d", "held")
    order: list[str] = []

    async def request(key: str) -> None:
        async with queue.slot("d", key):
            order.append(key)

    tasks = [asyncio.create_task(request("A")) for _ in range(50)]
    await _until_waiting(queue, 50)
    tasks.append(asyncio.create_task(request("B")))
    await _until_waiting(queue, 51)
    queue.release("d")
    await asyncio.gather(*tasks)
    assert order.index("B") <= 1
    assert len(order) == 51
    assert (queue.active("d"), queue.depth()) == (0, 0)


async def test_keys_alternate_while_both_have_waiters() -> None:
    """Two busy keys are served A, B, A, B... whatever order they queued in."""
    queue = _queue(1)
    await queue.acquire("d", "held")
    order: list[str] = []

    async def request(key: str) -> None:
        async with queue.slot("d", key):
            order.append(key)

    tasks = [asyncio.create_task(request(k)) for k in "AAAABBBB"]
    await _until_waiting(queue, 8)
    queue.release("d")
    await asyncio.gather(*tasks)
    assert order == list("ABABABAB")


async def test_a_wait_longer_than_max_wait_gets_a_429() -> None:
    """Past max_wait the request gives up with 429 and retry-after, and leaves the queue."""
    queue = _queue(1, max_wait=0.01)
    await queue.acquire("d", "held")
    with pytest.raises(NoDeploymentAvailableError) as info:
        await queue.acquire("d", "k")
    assert info.value.status == 429
    assert info.value.retry_after == 1.0
    assert queue.depth() == 0
    queue.release("d")
    assert queue.active("d") == 0


async def test_zero_max_wait_is_a_bare_429() -> None:
    """With queue_max_wait_seconds 0 a busy deployment answers 429 at once."""
    queue = _queue(1, max_wait=0)
    async with queue.slot("d", "k"):
        with pytest.raises(NoDeploymentAvailableError):
            await queue.acquire("d", "k")


async def test_a_full_queue_rejects_at_once() -> None:
    """With max_depth waiters already queued the next request is refused without waiting."""
    queue = _queue(1, max_depth=2)
    await queue.acquire("d", "held")
    waiting = [asyncio.create_task(queue.acquire("d", k)) for k in ("a", "b")]
    await _until_waiting(queue, 2)
    with pytest.raises(NoDeploymentAvailableError, match="queue is full"):
        await queue.acquire("d", "c")
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert queue.depth() == 0


async def test_cancelling_a_waiter_leaks_nothing() -> None:
    """A request cancelled while queued leaves no waiter and takes no slot."""
    queue = _queue(1)
    await queue.acquire("d", "held")
    task = asyncio.create_task(queue.acquire("d", "k"))
    await _until_waiting(queue, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert queue.depth() == 0
    queue.release("d")
    assert queue.active("d") == 0


async def test_cancelled_right_after_being_handed_a_slot_passes_it_on() -> None:
    """A waiter cancelled between being served and resuming gives its slot to the next."""
    queue = _queue(1)
    await queue.acquire("d", "held")
    first = asyncio.create_task(queue.acquire("d", "a"))
    await _until_waiting(queue, 1)
    second = asyncio.create_task(queue.acquire("d", "b"))
    await _until_waiting(queue, 2)
    queue.release("d")  # hands the slot to `first`...
    first.cancel()  # ...which is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await first
    await second  # the slot went on to `second`
    assert (queue.active("d"), queue.depth()) == (1, 0)
    queue.release("d")
    assert queue.active("d") == 0


async def test_depth_counts_waiters_per_deployment_and_in_total() -> None:
    """depth() is what the autoscaler reads: every request waiting, per deployment or all."""
    queue = FairQueue([("d", 1), ("e", 1)], max_wait=30, max_depth=10)
    await queue.acquire("d", "k")
    await queue.acquire("e", "k")
    tasks = [asyncio.create_task(queue.acquire(dep, "k")) for dep in ("d", "d", "e")]
    await _until_waiting(queue, 3)
    assert (queue.depth("d"), queue.depth("e"), queue.depth(), queue.depth("x")) == (2, 1, 3, 0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert queue.depth() == 0


async def test_window_waiters_go_in_fair_order() -> None:
    """Requests waiting for the same rpm window resume round-robin across keys."""
    queue = _queue(None)
    when = asyncio.get_running_loop().time() + 0.01
    order: list[str] = []

    async def request(key: str) -> None:
        await queue.wait_until("d", key, when)
        order.append(key)

    tasks = [asyncio.create_task(request(k)) for k in ["A"] * 5 + ["B"]]
    await _until_waiting(queue, 6)
    await asyncio.gather(*tasks)
    assert order.index("B") <= 1
    assert queue.depth() == 0


async def test_a_window_beyond_the_max_wait_is_refused_at_once() -> None:
    """A wait that could not end within max_wait is a 429 with the wait as retry-after."""
    queue = _queue(None, max_wait=1.0)
    loop = asyncio.get_running_loop()
    with pytest.raises(NoDeploymentAvailableError) as info:
        await queue.wait_until("d", "k", loop.time() + 30)
    assert info.value.retry_after is not None and info.value.retry_after > 1.0
    await queue.wait_until("d", "k", loop.time() - 1)  # already reached: no wait
    assert queue.depth() == 0


async def test_a_cancelled_window_waiter_leaves_the_queue() -> None:
    """Cancelling a request that waits for a window removes it from the depth."""
    queue = _queue(1, max_wait=60)
    task = asyncio.create_task(queue.wait_until("d", "k", asyncio.get_running_loop().time() + 50))
    await _until_waiting(queue, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert queue.depth() == 0


async def test_built_from_settings_limits_only_deployments_that_ask() -> None:
    """max_parallel_requests per deployment and the router's queue bounds are honoured."""
    settings = Settings(
        model_list=(
            ModelEntry("a", DeploymentParams(model="mock/m", max_parallel_requests=1), {"id": "x"}),
            ModelEntry("a", DeploymentParams(model="mock/m"), {"id": "y"}),
        ),
        router=RouterSettings(queue_max_wait_seconds=0, queue_max_depth=3),
    )
    queue = FairQueue.from_settings(Router(settings).deployments, settings.router)
    assert queue.limited("x") and not queue.limited("y")
    async with queue.slot("x", "k"):
        with pytest.raises(NoDeploymentAvailableError):
            await queue.acquire("x", "k")
