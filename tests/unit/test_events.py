"""The event bus (thread-safe publish, ids, dropping slow subscribers, keepalives) and the client's SSE parser."""

from __future__ import annotations

import asyncio
import threading

from virtfleet.client import parse_sse
from virtfleet.events import KEEPALIVE, EventBus, Subscription


async def drain(subscription: Subscription) -> list[str]:
    """Everything queued, up to and including the end marker (None)."""
    messages: list[str] = []
    while (message := await asyncio.wait_for(subscription.get(), 10)) is not None:
        messages.append(message)
    return messages


async def test_messages_carry_increasing_ids_and_reach_every_subscriber() -> None:
    bus = EventBus()
    first, second = bus.subscribe(), bus.subscribe()
    bus.publish("vm", {"id": "a", "name": "one"})
    bus.publish("job", {"id": "j", "status": "queued"})
    await asyncio.sleep(0)  # deliveries hop through the loop
    bus.close()
    expected = ['id: 1\nevent: vm\ndata: {"id":"a","name":"one"}\n\n',
                'id: 2\nevent: job\ndata: {"id":"j","status":"queued"}\n\n']
    assert await drain(first) == expected
    assert await drain(second) == expected


async def test_publishing_from_worker_threads_is_delivered_on_the_loop() -> None:
    bus = EventBus(queue_size=1000)
    subscription = bus.subscribe()
    threads = [threading.Thread(target=lambda t=t: [bus.publish("n", {"t": t, "i": i}) for i in range(50)])
               for t in range(4)]
    for thread in threads:
        thread.start()
    await asyncio.to_thread(lambda: [thread.join() for thread in threads])
    await asyncio.sleep(0)
    bus.close()
    messages = await drain(subscription)
    assert len(messages) == 200
    ids = [int(m.split("\n")[0].removeprefix("id: ")) for m in messages]
    assert ids == list(range(1, 201))
    for t in range(4):  # each thread's own messages keep their order
        mine = [m for m in messages if f'"t":{t},' in m]
        assert [f'"i":{i}' in m for i, m in enumerate(mine)] == [True] * 50


async def test_a_subscriber_that_falls_behind_is_dropped_and_the_others_go_on() -> None:
    bus = EventBus(queue_size=3)
    slow, fast = bus.subscribe(), bus.subscribe()
    received: list[str] = []
    for i in range(5):
        bus.publish("n", {"i": i})
        await asyncio.sleep(0)
        received.append(await asyncio.wait_for(fast.get(), 10) or "")  # `fast` keeps up
    assert slow.dropped and not fast.dropped
    assert await drain(slow) == []  # what it had queued is discarded: its stream just ends
    assert bus.subscriber_count == 1
    assert [m.split("\n")[2] for m in received] == [f'data: {{"i":{i}}}' for i in range(5)]


async def test_closing_the_bus_ends_streams_and_later_subscriptions() -> None:
    bus = EventBus()
    subscription = bus.subscribe()
    bus.close()
    assert await drain(subscription) == []
    assert await drain(bus.subscribe()) == []
    assert bus.subscriber_count == 0
    bus.publish("vm", {"id": "x"})  # after close: a no-op, not an error


async def test_closing_delivers_the_backlog_unless_the_queue_is_full() -> None:
    bus = EventBus(queue_size=2)
    roomy, full = bus.subscribe(), bus.subscribe()
    bus.publish("n", {"i": 0})
    await asyncio.sleep(0)
    assert (await roomy.get() or "").startswith("id: 1\n")
    bus.publish("n", {"i": 1})
    await asyncio.sleep(0)
    bus.close()
    assert [m.split("\n")[0] for m in await drain(roomy)] == ["id: 2"]
    assert await drain(full) == []  # two queued and no room left for the end: it just ends


async def test_unsubscribing_stops_delivery() -> None:
    bus = EventBus()
    subscription = bus.subscribe()
    subscription.close()
    assert bus.subscriber_count == 0
    bus.publish("vm", {"id": "x"})
    await asyncio.sleep(0)
    assert await drain(subscription) == []


async def test_stream_sends_keepalives_between_messages_and_ends_with_the_bus() -> None:
    bus = EventBus(keepalive=0.01)
    subscription = bus.subscribe()
    stream = subscription.messages(bus.keepalive)
    assert await asyncio.wait_for(anext(stream), 10) == KEEPALIVE  # nothing published: a keepalive
    assert await asyncio.wait_for(anext(stream), 10) == KEEPALIVE
    bus.publish("vm", {"id": "x"})
    chunks = [await asyncio.wait_for(anext(stream), 10)]
    while chunks[-1] == KEEPALIVE:
        chunks.append(await asyncio.wait_for(anext(stream), 10))
    assert chunks[-1].startswith("id: 1\nevent: vm\n")
    bus.close()
    rest = [chunk async for chunk in stream]
    assert set(rest) <= {KEEPALIVE}


def test_parse_sse_reads_fields_joins_data_lines_and_skips_comments() -> None:
    lines = [": keepalive", "", "id: 7", "event: vm", 'data: {"id":"a",', 'data: "n":1}', "",
             "retry: 100", "", 'data: "plain"', "", "id: 8", "event: job", "data:{}", ""]
    assert list(parse_sse(lines)) == [
        {"id": 7, "event": "vm", "data": {"id": "a", "n": 1}},
        {"id": None, "event": "message", "data": "plain"},
        {"id": 8, "event": "job", "data": {}},
    ]
