"""Blob bytes reach a file in write calls of at most 32 KiB, so that no call asks the
page cache for a folio above order 3 (see ``dockyard/storage/writes.py``)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from dockyard.storage.filesystem import FilesystemDriver
from dockyard.storage.writes import WRITE_CALL, pwrite_all, write_all
from tests.support.syscalls import write_calls

MIB = 1 << 20


def calls_for(size: int) -> int:
    return -(-size // WRITE_CALL)


def test_write_all_writes_every_byte_in_calls_of_at_most_32_kib(tmp_path: Path) -> None:
    data = os.urandom(MIB + 5)
    fd = os.open(tmp_path / "blob", os.O_WRONLY | os.O_CREAT)
    try:
        before = write_calls("thread-self")
        write_all(fd, data)
        made = write_calls("thread-self") - before
    finally:
        os.close(fd)
    assert WRITE_CALL == 32 << 10
    assert made == calls_for(len(data)) == 33
    assert (tmp_path / "blob").read_bytes() == data


def test_pwrite_all_writes_at_the_offset_and_leaves_the_position(tmp_path: Path) -> None:
    data = os.urandom(MIB - 1)
    fd = os.open(tmp_path / "spool", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"head")
        before = write_calls("thread-self")
        pwrite_all(fd, memoryview(data), 10)
        made = write_calls("thread-self") - before
        position = os.lseek(fd, 0, os.SEEK_CUR)
    finally:
        os.close(fd)
    assert made == calls_for(len(data)) == 32
    assert position == 4
    assert (tmp_path / "spool").read_bytes() == b"head" + bytes(6) + data


def test_an_upload_writers_pieces_land_in_small_calls(tmp_path: Path) -> None:
    # A piece written through the writer (thread pool) and one appended from the
    # caller's thread, as an upload's hash lane does; both are 1 MiB.
    pieces = [os.urandom(MIB), os.urandom(MIB)]

    async def main() -> int:
        driver = FilesystemDriver(str(tmp_path / "root"))
        try:
            writer = await driver.writer("/uploads/data")
            try:
                before = write_calls()
                await writer.write(pieces[0])
                append = writer.blocking_append()
                assert append is not None
                await asyncio.to_thread(append, pieces[1])
                made = write_calls() - before
                await writer.commit()
            finally:
                await writer.close()
            return made
        finally:
            await driver.close()

    made = asyncio.run(main())
    # Other threads may write meanwhile; the pieces alone take this many calls.
    assert made >= 2 * calls_for(MIB)
    assert (tmp_path / "root" / "uploads" / "data").read_bytes() == b"".join(pieces)
