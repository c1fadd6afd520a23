"""The pool of receive buffers: used again while fetches come, let go after a quiet spell.

What is received into them, and when a buffer may be received into again, is tested
through whole fetches in ``test_fetch.py``."""

from __future__ import annotations

import asyncio

from dockyard.proxy.receive import BufferPool


async def test_a_buffer_given_back_is_taken_again_before_a_new_one_is_made() -> None:
    pool = BufferPool()
    first = pool.take()
    first.data[:5] = b"first"
    first.release()
    assert pool.free == 1
    again = pool.take()
    assert again is first and pool.made == 1 and pool.taken == 2
    # Held twice (a piece and a reader): back only when both let go.
    again.hold()
    again.release()
    assert pool.free == 0
    again.release()
    assert pool.free == 1
    pool.close()


async def test_the_pool_keeps_at_most_its_share() -> None:
    pool = BufferPool(kept=2)
    buffers = [pool.take() for _ in range(5)]
    for buffer in buffers:
        buffer.release()
    assert pool.made == 5 and pool.free == 2
    pool.close()


async def test_the_pool_lets_its_buffers_go_after_a_quiet_spell_only() -> None:
    pool = BufferPool(keep_seconds=1.0)
    pool.take().release()
    assert pool.free == 1
    # A fetch half a spell later keeps the buffers until a whole spell after it.
    await asyncio.sleep(0.5)
    pool.take().release()
    await asyncio.sleep(0.7)
    assert pool.free == 1
    await asyncio.sleep(0.6)
    assert pool.free == 0
    pool.close()
