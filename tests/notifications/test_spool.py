"""The on-disk queue: order, segments, cursor, a torn last line, slot locks."""

from __future__ import annotations

import os
from pathlib import Path

from dockyard.notifications.spool import Spool, claim, slot_numbers, try_claim


def _drain(spool: Spool) -> list[bytes]:
    seen = []
    while (pending := spool.peek()) is not None:
        position, line = pending
        seen.append(line)
        spool.commit(position)
    return seen


def test_events_come_out_in_order_across_segments_and_reopening(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "q"), segment_bytes=64)
    lines = [f'{{"n":{index}}}'.encode() for index in range(20)]
    for line in lines[:12]:
        spool.append(line)
    assert _drain(spool) == lines[:12]
    spool.close()

    spool = Spool(str(tmp_path / "q"), segment_bytes=64)
    assert spool.peek() is None  # the cursor survived
    for line in lines[12:]:
        spool.append(line)
    # Not yet delivered, then reopened: the same events again, in order.
    spool.close()
    spool = Spool(str(tmp_path / "q"), segment_bytes=64)
    assert _drain(spool) == lines[12:]
    # Delivered segments are removed; only the one being written remains.
    assert len([name for name in os.listdir(tmp_path / "q") if name.endswith(".events")]) == 1
    spool.close()


def test_an_undelivered_event_stays_first(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "q"))
    spool.append(b'{"n":1}')
    spool.append(b'{"n":2}')
    first = spool.peek()
    assert first is not None and first[1] == b'{"n":1}'
    assert spool.peek() == first
    spool.commit(first[0])
    second = spool.peek()
    assert second is not None and second[1] == b'{"n":2}'
    spool.close()


def test_a_half_written_last_line_is_cut(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "q"))
    spool.append(b'{"n":1}')
    spool.close()
    (segment,) = [path for path in (tmp_path / "q").iterdir() if path.suffix == ".events"]
    with open(segment, "ab") as file:
        file.write(b'{"n":2, "torn": "' + b"x" * 200_000)
    spool = Spool(str(tmp_path / "q"))
    spool.append(b'{"n":3}')
    assert _drain(spool) == [b'{"n":1}', b'{"n":3}']
    spool.close()


def test_each_holder_gets_its_own_slot_and_a_released_one_is_reused(tmp_path: Path) -> None:
    root = str(tmp_path / "slots")
    first, second = claim(root), claim(root)
    assert (first.number, second.number) == (0, 1)
    assert try_claim(root, 0) is None
    first.release()
    again = claim(root)
    assert again.number == 0
    assert slot_numbers(root) == [0, 1]
    again.release()
    second.release()
