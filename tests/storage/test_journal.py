"""The filesystem driver's publish journal: one durable record per replayable batch,
replayed in order after a crash, settled before any other change."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import pytest

from dockyard.storage import FilesystemDriver, InvalidPathError, journal
from dockyard.storage.journal import JOURNAL_PATH, decode, encode

BATCH = {
    "/blobs/sha256/ab/abcd/data": b"{}",
    "/repo/_manifests/revisions/sha256/abcd/link": b"sha256:abcd",
    "/repo/_manifests/tags/latest/current/link": b"sha256:abcd",
}
STAGES = [[path] for path in BATCH]


@pytest.fixture
def unsettled(monkeypatch: pytest.MonkeyPatch) -> None:
    """No background settle: records stay until something settles them."""
    monkeypatch.setattr(journal, "SETTLE_AFTER", 3600.0)


async def publish(driver: FilesystemDriver, files: dict[str, bytes]) -> None:
    async with await driver.prepare_writes(files, replayable=True) as prepared:
        await prepared.publish_in_order([[path] for path in files])


def journal_of(root: Path) -> bytes:
    return (root / JOURNAL_PATH).read_bytes()


def bare_journal(
    tmp_path: Path,
    sync_paths: Callable[[Iterable[str], Iterable[str]], None] = lambda files, dirs: None,
) -> journal.PublishJournal:
    """A journal on its own, replaying and syncing nothing."""
    return journal.PublishJournal(
        str(tmp_path),
        lambda directory: os.makedirs(directory, exist_ok=True),
        lambda real, data: None,
        lambda real: None,
        sync_paths,
    )


def record_together(recorder: journal.PublishJournal, threads: list[threading.Thread]) -> None:
    """Start ``threads`` (each recording a batch) while the journal is locked, so that
    every batch is queued before any is recorded; wait for them all."""
    with recorder._lock:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(recorder._queue) < len(threads) and time.monotonic() < deadline:
            time.sleep(0.001)
    for thread in threads:
        thread.join()


def test_a_removal_is_recorded_without_data() -> None:
    entries = [("a/link", b""), ("b/stale", None), ("c/data", b"x")]
    assert decode(encode(entries)) == [entries]


def test_records_round_trip_and_a_torn_one_ends_them() -> None:
    first = encode([("a/link", b"one"), ("b/data", b"")])
    second = encode([("a/link", b"two")])
    assert decode(first + second) == [[("a/link", b"one"), ("b/data", b"")], [("a/link", b"two")]]
    # A crash while the second was appended: it was never acknowledged.
    for cut in range(1, len(second)):
        assert decode(first + second[:cut]) == [[("a/link", b"one"), ("b/data", b"")]]
    damaged = bytearray(first + second)
    damaged[len(first) + 20] ^= 0xFF
    assert decode(bytes(damaged)) == [[("a/link", b"one"), ("b/data", b"")]]


async def test_a_batch_is_visible_at_once_and_recorded_until_settled(
    tmp_path: Path, unsettled: None
) -> None:
    driver = FilesystemDriver(str(tmp_path))
    await publish(driver, BATCH)
    for path, data in BATCH.items():
        assert await driver.read(path) == data
    assert decode(journal_of(tmp_path)) == [[(p.lstrip("/"), d) for p, d in BATCH.items()]]
    assert driver._journal.pending()
    # Not addressable through the driver.
    with pytest.raises(InvalidPathError):
        await driver.read(f"/{JOURNAL_PATH}")
    await driver.close()
    assert journal_of(tmp_path) == b""


async def test_a_crash_loses_nothing_recorded_and_replays_in_order(
    tmp_path: Path, unsettled: None
) -> None:
    driver = FilesystemDriver(str(tmp_path))
    await publish(driver, BATCH)
    await publish(driver, {"/repo/_manifests/tags/latest/current/link": b"sha256:ef01"})
    # The machine crashes: what only the page cache held is gone (the driver is never
    # closed), the journal is on disk.
    shutil.rmtree(tmp_path / "blobs")
    shutil.rmtree(tmp_path / "repo")
    again = FilesystemDriver(str(tmp_path))
    assert await again.read("/blobs/sha256/ab/abcd/data") == b"{}"
    assert await again.read("/repo/_manifests/revisions/sha256/abcd/link") == b"sha256:abcd"
    # The later record wins: records are replayed in the order they were written.
    assert await again.read("/repo/_manifests/tags/latest/current/link") == b"sha256:ef01"
    assert journal_of(tmp_path) == b""
    assert not [name for name in os.listdir(tmp_path / "repo/_manifests/tags/latest/current")
                if name != "link"]  # fmt: skip
    await again.close()


async def test_a_batch_removes_its_stale_files_and_a_replay_removes_them_again(
    tmp_path: Path, unsettled: None
) -> None:
    driver = FilesystemDriver(str(tmp_path))
    await publish(driver, {"/repo/_tagged/one/latest": b""})
    async with await driver.prepare_writes(
        {"/repo/_tagged/two/latest": b""}, replayable=True, removals=["/repo/_tagged/one/latest"]
    ) as prepared:
        await prepared.publish_in_order([["/repo/_tagged/two/latest"]])
    assert not (tmp_path / "repo/_tagged/one/latest").exists()
    # Recorded with the batch: nothing was settled for it.
    assert [len(record) for record in decode(journal_of(tmp_path))] == [1, 2]
    # A crash brings the removed file back (deletes are not durable) and loses the new
    # one; the replay puts both right.
    (tmp_path / "repo/_tagged/one/latest").touch()
    shutil.rmtree(tmp_path / "repo/_tagged/two")
    again = FilesystemDriver(str(tmp_path))
    assert not (tmp_path / "repo/_tagged/one/latest").exists()
    assert (tmp_path / "repo/_tagged/two/latest").exists()
    await again.close()


async def test_a_record_torn_by_the_crash_is_not_replayed(tmp_path: Path, unsettled: None) -> None:
    driver = FilesystemDriver(str(tmp_path))
    await publish(driver, {"/a/link": b"one"})
    torn = encode([("a/link", b"two")])
    path = tmp_path / JOURNAL_PATH
    path.write_bytes(path.read_bytes() + torn[:-3])
    os.unlink(tmp_path / "a/link")
    again = FilesystemDriver(str(tmp_path))
    assert await again.read("/a/link") == b"one"
    await again.close()


async def test_a_stage_refused_before_recording_publishes_nothing(
    tmp_path: Path, unsettled: None
) -> None:
    driver = FilesystemDriver(str(tmp_path))

    def refuse(stage: int) -> None:
        raise RuntimeError(f"stage {stage} refused")

    with pytest.raises(RuntimeError, match="stage 1"):
        async with await driver.prepare_writes(BATCH, replayable=True) as prepared:
            await prepared.publish_in_order(STAGES, refuse)
    # Recorded, every stage would be replayed after a crash: none is recorded or shown.
    assert not driver._journal.pending()
    assert not (tmp_path / "blobs/sha256/ab/abcd/data").exists()
    leftovers = [name for _, _, names in os.walk(tmp_path) for name in names]
    assert leftovers in ([], [os.path.basename(JOURNAL_PATH)])
    await driver.close()


Change = Callable[[FilesystemDriver, str], Awaitable[object]]

RECORDED_TAG = "/repo/_manifests/tags/latest"


async def _write(driver: FilesystemDriver, tag: str) -> None:
    await driver.write(f"{tag}/current/link", b"x")


async def _write_not_durably(driver: FilesystemDriver, tag: str) -> None:
    await driver.write(f"{tag}/current/link", b"x", durable=False)


async def _writer(driver: FilesystemDriver, tag: str) -> None:
    writer = await driver.writer(f"{tag}/current/link")
    await writer.write(b"data")
    await writer.close()


async def _publish_plainly(driver: FilesystemDriver, tag: str) -> None:
    async with await driver.prepare_writes({f"{tag}/current/link": b"a"}) as prepared:
        await prepared.publish([f"{tag}/current/link"])


async def _move(driver: FilesystemDriver, tag: str) -> None:
    await driver.move(tag, "/moved")


async def _move_unless_touched(driver: FilesystemDriver, tag: str) -> None:
    await driver.move_unless_touched(tag, "/moved", time.time() + 60)


async def _delete(driver: FilesystemDriver, tag: str) -> None:
    await driver.delete(tag)


async def _delete_each(driver: FilesystemDriver, tag: str) -> None:
    await driver.delete_each([tag])


async def _remove_empty(driver: FilesystemDriver, tag: str) -> None:
    await driver.remove_empty(tag.rsplit("/", 2)[0])


CHANGES = [
    _write,
    _write_not_durably,
    _writer,
    _publish_plainly,
    _move,
    _move_unless_touched,
    _delete,
    _delete_each,
    _remove_empty,
]


@pytest.mark.parametrize("change", CHANGES)
async def test_a_change_to_a_recorded_path_settles_the_journal_first(
    tmp_path: Path, unsettled: None, change: Change
) -> None:
    driver = FilesystemDriver(str(tmp_path))
    await publish(driver, BATCH)
    assert driver._journal.pending()
    await change(driver, RECORDED_TAG)
    # Nothing recorded is left to replay over this change after a crash.
    assert not driver._journal.pending()
    assert journal_of(tmp_path) == b""
    await driver.close()


@pytest.mark.parametrize("change", [change for change in CHANGES if change is not _writer])
async def test_a_change_elsewhere_leaves_the_records_to_their_settle(
    tmp_path: Path, unsettled: None, change: Change
) -> None:
    driver = FilesystemDriver(str(tmp_path))
    other = "/other/_manifests/tags/latest"
    await driver.write(f"{other}/current/link", b"sha256:abcd")
    await publish(driver, BATCH)
    recorded = journal_of(tmp_path)
    await change(driver, other)
    # A replay rewrites only the recorded paths, none of them at or below this change.
    assert journal_of(tmp_path) == recorded
    await driver.close()
    assert journal_of(tmp_path) == b""


@pytest.mark.parametrize("at_end", [False, True])
async def test_a_writer_anywhere_settles_every_record_first(
    tmp_path: Path, unsettled: None, at_end: bool
) -> None:
    # A settle in the background would flush and wait on the stream being written.
    driver = FilesystemDriver(str(tmp_path))
    await driver.write("/uploads/data", b"")
    await publish(driver, BATCH)
    writer = await (driver.writer_at_end if at_end else driver.writer)("/uploads/data")
    assert journal_of(tmp_path) == b""
    await writer.write(b"data")
    await writer.close()
    await driver.close()


async def test_a_change_beside_a_replay_survives_the_crash(tmp_path: Path, unsettled: None) -> None:
    driver = FilesystemDriver(str(tmp_path))
    for tag in ["old", "older"]:
        await driver.write(f"/repo/_manifests/tags/{tag}/current/link", b"sha256:0000")
    await publish(driver, BATCH)
    await driver.delete("/repo/_manifests/tags/old")
    await publish(driver, {"/repo/_manifests/tags/new/current/link": b"sha256:abcd"})
    await driver.delete("/repo/_manifests/tags/older/current")
    assert len(decode(journal_of(tmp_path))) == 2
    # The machine crashes with both records unsettled, the last one's file lost with
    # the page cache: the replay brings back what the records wrote, none of what was
    # removed beside them.
    shutil.rmtree(tmp_path / "repo/_manifests/tags/new")
    again = FilesystemDriver(str(tmp_path))
    assert await again.list("/repo/_manifests/tags") == ["latest", "new", "older"]
    assert await again.list("/repo/_manifests/tags/older") == []
    assert await again.read("/repo/_manifests/tags/new/current/link") == b"sha256:abcd"
    await again.close()


def test_touches_names_recorded_paths_and_the_directories_above_them(tmp_path: Path) -> None:
    recorder = bare_journal(tmp_path)
    root = str(tmp_path)
    recorder.record([(f"{root}/a/b/link", b"x"), (f"{root}/c/stale", None)], lambda: None)
    for path in ["a/b/link", "a/b", "a", "c/stale", "c"]:
        assert recorder.touches([f"{root}/{path}"]), path
    for path in ["a/b/lin", "a/bb", "b", "a/b/link/below", "c/other"]:
        assert not recorder.touches([f"{root}/{path}"]), path
    assert recorder.touches([f"{root}/b", f"{root}/a/b"])
    assert recorder.touches([root])
    # Read on from where it stopped: a later record counts too.
    recorder.record([(f"{root}/d/link", b"y")], lambda: None)
    assert recorder.touches([f"{root}/d"])
    recorder.settle()
    assert not recorder.touches([f"{root}/a/b/link"])


def test_touches_sees_the_journal_emptied_and_written_again_by_another(tmp_path: Path) -> None:
    root = str(tmp_path)
    one, other = bare_journal(tmp_path), bare_journal(tmp_path)
    one.record([(f"{root}/a/link", b"x"), (f"{root}/b/link", b"x")], lambda: None)
    assert one.touches([f"{root}/a"])
    # Another process settles, then records less than there was (a journal shorter
    # than where this one stopped) and then more than there was.
    other.settle()
    other.record([(f"{root}/c/link", b"x")], lambda: None)
    assert not one.touches([f"{root}/a"])
    assert one.touches([f"{root}/c"])
    other.settle()
    other.record([(f"{root}/d/{n}", b"x" * 64) for n in range(8)], lambda: None)
    assert not one.touches([f"{root}/c"])
    assert one.touches([f"{root}/d/7"])
    # A record cut back after a failed append, and another in its place.
    end = os.path.getsize(one.path)
    one.record([(f"{root}/e/link", b"x")], lambda: None)
    assert one.touches([f"{root}/e"])
    os.truncate(one.path, end)
    one.record([(f"{root}/f/link", b"x")], lambda: None)
    assert not one.touches([f"{root}/e"])
    assert one.touches([f"{root}/f"])


def test_touches_settles_rather_than_guess_at_a_record_half_appended(tmp_path: Path) -> None:
    root = str(tmp_path)
    recorder = bare_journal(tmp_path)
    recorder.record([(f"{root}/a/link", b"x")], lambda: None)
    with open(recorder.path, "ab") as appending:
        appending.write(encode([("b/link", b"x")])[:10])
    assert recorder.touches([f"{root}/c"])


async def test_reads_and_touches_leave_the_journal_alone(tmp_path: Path, unsettled: None) -> None:
    driver = FilesystemDriver(str(tmp_path))
    await publish(driver, BATCH)
    await driver.read("/repo/_manifests/tags/latest/current/link")
    await driver.stat("/repo/_manifests/revisions/sha256/abcd/link")
    await driver.list("/repo/_manifests")
    await driver.touch("/blobs/sha256/ab/abcd/data")
    assert driver._journal.pending()
    await driver.close()


async def test_records_are_settled_in_the_background(tmp_path: Path) -> None:
    driver = FilesystemDriver(str(tmp_path))
    await publish(driver, BATCH)
    deadline = time.monotonic() + 30
    while driver._journal.pending() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not driver._journal.pending()
    await driver.close()


RECORDER = textwrap.dedent(
    """
    import asyncio, os, sys
    from dockyard.storage import FilesystemDriver, journal
    journal.SETTLE_AFTER = 3600.0

    async def main() -> None:
        driver = FilesystemDriver(sys.argv[1])
        name = sys.argv[2]
        # Started (and recovered) before any of them records, then all at once.
        open(f"{sys.argv[4]}/ready-{name}", "w").close()
        while not os.path.exists(f"{sys.argv[4]}/go"):
            await asyncio.sleep(0.01)
        for n in range(int(sys.argv[3])):
            files = {f"/{name}/{n}/link": f"{name}-{n}".encode() * 50, f"/{name}/last": b"%d" % n}
            async with await driver.prepare_writes(files, replayable=True) as prepared:
                await prepared.publish_in_order([[p] for p in files])

    asyncio.run(main())
    """
)


def test_processes_sharing_a_store_record_whole_batches(tmp_path: Path) -> None:
    count = 150
    root, signals = tmp_path / "root", tmp_path / "signals"
    root.mkdir()
    signals.mkdir()
    names = ("one", "two", "three")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RECORDER, str(root), name, str(count), str(signals)]
        )
        for name in names
    ]
    deadline = time.monotonic() + 60
    while len(os.listdir(signals)) < len(names) and time.monotonic() < deadline:
        time.sleep(0.01)
    (signals / "go").touch()
    assert [process.wait(timeout=120) for process in processes] == [0, 0, 0]
    records = decode(journal_of(root))
    assert len(records) == 3 * count
    for name in names:
        mine = [record for record in records if record[0][0].startswith(f"{name}/")]
        # Each process's batches whole, in the order it made them.
        assert [record[1] for record in mine] == [(f"{name}/last", b"%d" % n) for n in range(count)]
        assert (root / name / "last").read_bytes() == b"%d" % (count - 1)


SETTLER = textwrap.dedent(
    """
    import asyncio, sys
    from dockyard.storage import FilesystemDriver, journal
    journal.SETTLE_AFTER = 3600.0
    journal.SYNCFS_DIRTY_LIMIT = int(sys.argv[2])
    FILES = {
        "/blobs/sha256/ab/abcd/data": b"{}",
        "/repo/_manifests/revisions/sha256/abcd/link": b"sha256:abcd",
        "/repo/_manifests/tags/latest/current/link": b"sha256:abcd",
    }

    async def main() -> None:
        driver = FilesystemDriver(sys.argv[1])
        await driver.write("/repo/existing", b"x")
        # The first batch makes the journal (and fsyncs the root for its entry).
        async with await driver.prepare_writes({"/repo/first": b"1"}, replayable=True) as first:
            await first.publish(["/repo/first"])
        driver._journal.settle()
        print("PUBLISH", flush=True)
        async with await driver.prepare_writes(FILES, replayable=True) as prepared:
            await prepared.publish_in_order([[p] for p in FILES])
        print("SETTLE", flush=True)
        driver._journal.settle()
        print("END", flush=True)
        await driver.close()

    asyncio.run(main())
    """
)
_CALL = re.compile(r"^(\d+)\s+(\w+)\((.*)$")
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>")


def trace_settle(tmp_path: Path, dirty_limit: int) -> tuple[list[tuple[str, str, int, int]], str]:
    """The calls of SETTLER under strace: (call, path or argument, start line, end line),
    markers as ("MARK", name, line, line)."""
    root = tmp_path / "root"
    root.mkdir()
    output = tmp_path / "trace.txt"
    subprocess.run(
        [
            "strace", "-f", "-y", "-qq", "-o", str(output),
            "-e", "trace=fsync,fdatasync,syncfs,ftruncate,rename,renameat,renameat2,write",
            sys.executable, "-c", SETTLER, str(root), str(dirty_limit),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    calls: list[tuple[str, str, int, int]] = []
    unfinished: dict[int, int] = {}
    for number, line in enumerate(output.read_text().splitlines()):
        resumed = _RESUMED.match(line)
        if resumed:
            index = unfinished.pop(int(resumed.group(1)))
            name, argument, start, _ = calls[index]
            calls[index] = (name, argument, start, number)
            continue
        call = _CALL.match(line)
        if not call:
            continue
        thread, name, rest = int(call.group(1)), call.group(2), call.group(3)
        if name == "write":
            marker = re.search(r'^1<[^>]*>, "(PUBLISH|SETTLE|END)', rest)
            if marker:
                calls.append(("MARK", marker.group(1), number, number))
            continue
        paths = re.findall(r'"([^"]*)"', rest) if name.startswith("rename") else []
        described = re.match(r"^\d+<([^>]*)>", rest)
        argument = " -> ".join(paths) if paths else (described.group(1) if described else rest)
        if "<unfinished" in rest:
            unfinished[thread] = len(calls)
        calls.append((name, argument, number, number))
    return calls, os.path.realpath(root)


def between(
    calls: list[tuple[str, str, int, int]], first: str, last: str
) -> list[tuple[str, str, int, int]]:
    start = next(c[2] for c in calls if c[:2] == ("MARK", first))
    end = next(c[2] for c in calls if c[:2] == ("MARK", last))
    return [c for c in calls if start < c[2] < end and c[0] != "MARK"]


@pytest.mark.parametrize("dirty_limit", [0, 1 << 40], ids=["fsync-each", "syncfs"])
def test_one_fdatasync_per_batch_and_a_settle_before_the_journal_empties(
    tmp_path: Path, dirty_limit: int
) -> None:
    if shutil.which("strace") is None:
        pytest.fail("strace is needed (scripts/test.sh installs it)")
    calls, root = trace_settle(tmp_path, dirty_limit)
    journal_path = f"{root}/{JOURNAL_PATH}"
    published = between(calls, "PUBLISH", "SETTLE")
    # The batch: its record made durable with one fdatasync, before any name appears,
    # then every file renamed into place in stage order, with no fsync at all.
    syncs = [c for c in published if c[0] in ("fsync", "fdatasync", "syncfs")]
    assert [(c[0], c[1]) for c in syncs] == [("fdatasync", journal_path)]
    renames = [c for c in published if c[0].startswith("rename")]
    assert [c[1].split(" -> ")[1] for c in renames] == [f"{root}{path}" for path in BATCH]
    assert syncs[0][3] < renames[0][2]

    settled = between(calls, "SETTLE", "END")
    truncate = next(c for c in settled if c[0] == "ftruncate")
    assert truncate[1] == journal_path
    before = [c for c in settled if c[3] < truncate[2]]
    if dirty_limit:
        assert [c[0] for c in before if c[0] == "syncfs"] == ["syncfs", "syncfs"]
    else:
        synced = {c[1] for c in before if c[0] == "fsync"}
        for path in BATCH:
            real = f"{root}{path}"
            assert real in synced, real
            # Every directory up to the root holds an entry the batch may have made.
            parent = os.path.dirname(real)
            while len(parent) >= len(root):
                assert parent in synced, parent
                parent = os.path.dirname(parent)
    # The empty journal is durable before the settle returns.
    assert any(c[0] == "fdatasync" and c[1] == journal_path and c[2] > truncate[3] for c in settled)


def test_batches_that_wait_together_share_one_fdatasync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unsettled: None
) -> None:
    synced: list[int] = []
    fdatasync = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), fdatasync(fd))[1])
    recorder = bare_journal(tmp_path)
    published: list[int] = []

    def batch(n: int) -> None:
        recorder.record([(f"{tmp_path}/file{n}", b"%d" % n)], lambda: published.append(n))

    threads = [threading.Thread(target=batch, args=(n,)) for n in range(6)]
    record_together(recorder, threads)
    assert len(synced) == 1
    assert sorted(published) == list(range(6))
    # Recorded in the order they are published.
    records = decode(journal_of(tmp_path))
    assert [record[0][1] for record in records] == [b"%d" % n for n in published]
    recorder.close()


async def test_a_settle_makes_durable_what_was_recorded_while_it_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unsettled: None
) -> None:
    driver = FilesystemDriver(str(tmp_path))
    recorder = driver._journal
    await publish(driver, {"/a/first": b"1"})
    synced: list[list[str]] = []
    make_durable = recorder._make_durable

    def syncing(records: list[list[journal.Entry]]) -> None:
        synced.append([path for record in records for path, _ in record])
        make_durable(records)
        if len(synced) == 1:
            # Recorded while the first records are synced, without the lock.
            recorder.record([(f"{tmp_path}/b/second", b"2")], lambda: None)

    monkeypatch.setattr(recorder, "_make_durable", syncing)
    await asyncio.to_thread(recorder.settle)
    assert synced == [["a/first"], ["b/second"]]
    assert journal_of(tmp_path) == b""
    await driver.close()


def test_batches_whose_recording_failed_all_fail_and_none_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unsettled: None
) -> None:
    recorder = bare_journal(tmp_path)
    # The journal cannot be opened once (then could be): the batches queued together
    # must all fail, not be forgotten by the next thread that records.
    descriptor = recorder._descriptor
    calls: list[bool] = []

    def failing_once(create: bool) -> int | None:
        calls.append(create)
        if len(calls) == 1:
            raise IsADirectoryError(21, "in the way")
        return descriptor(create)

    monkeypatch.setattr(recorder, "_descriptor", failing_once)
    published: list[int] = []
    failures: list[BaseException] = []

    def batch(n: int) -> None:
        try:
            recorder.record([(f"{tmp_path}/file{n}", b"x")], lambda: published.append(n))
        except OSError as error:
            failures.append(error)

    threads = [threading.Thread(target=batch, args=(n,)) for n in range(4)]
    record_together(recorder, threads)
    assert published == []
    assert len(failures) == len(threads)
    assert all(isinstance(error, IsADirectoryError) for error in failures)


def test_a_failed_syncfs_falls_back_to_syncing_each_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unsettled: None
) -> None:
    synced: list[tuple[set[str], set[str]]] = []
    recorder = bare_journal(tmp_path, lambda files, dirs: synced.append((set(files), set(dirs))))

    class FailingSyncfs:
        available = True

        def __call__(self, fd: int) -> None:
            raise OSError(5, "a write-back error elsewhere")

    monkeypatch.setattr(recorder, "_syncfs", FailingSyncfs())
    monkeypatch.setattr(journal, "SYNCFS_DIRTY_LIMIT", 1 << 62)
    recorder.record([(f"{tmp_path}/a/b/link", b"x")], lambda: None)
    recorder.settle()
    root = str(tmp_path)
    assert synced == [({f"{root}/a/b/link"}, {root, f"{root}/a", f"{root}/a/b"})]
    assert journal_of(tmp_path) == b""
    recorder.close()
