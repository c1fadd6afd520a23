"""Resumable SHA-256: a saved state, restored anywhere, goes on to hashlib's digest."""

from __future__ import annotations

import hashlib
import random
import struct

import pytest

from dockyard.registry.hashstate import MAGIC, STATE_SIZE, Sha256States, sha256_states


@pytest.fixture
def states() -> Sha256States:
    loaded = sha256_states()
    # The machines this runs on have OpenSSL's libcrypto (hashlib itself links it).
    assert loaded is not None
    return loaded


@pytest.mark.parametrize("cut", [0, 1, 55, 56, 63, 64, 65, 127, 128, 4096, 1_000_003])
def test_a_restored_state_continues_to_the_whole_digest(states: Sha256States, cut: int) -> None:
    data = random.Random(cut).randbytes(cut + 777)
    first = states.new()
    first.update(data[:cut])
    state = first.state()
    assert len(state) == STATE_SIZE
    restored = states.restore(state, cut)
    assert restored is not None
    restored.update(data[cut:])
    assert restored.hexdigest() == hashlib.sha256(data).hexdigest()
    assert first.hexdigest() == hashlib.sha256(data[:cut]).hexdigest()


def test_the_state_is_gos_encoding(states: Sha256States) -> None:
    # Decoded field by field: magic, eight words, the pending bytes zero-padded to a
    # block, the length. (tests/interop compares it with Distribution's own files.)
    data = bytes(range(200))
    hasher = states.new()
    hasher.update(data)
    state = hasher.state()
    assert state[:4] == MAGIC
    assert state[36 : 36 + 8] == data[192:]
    assert state[36 + 8 : 100] == bytes(56)
    assert struct.unpack(">Q", state[100:]) == (200,)


def test_a_digest_does_not_end_the_hash(states: Sha256States) -> None:
    hasher = states.new()
    hasher.update(b"abc")
    assert hasher.hexdigest() == hashlib.sha256(b"abc").hexdigest()
    hasher.update(memoryview(b"def"))
    assert hasher.digest() == hashlib.sha256(b"abcdef").digest()
    assert hasher.length == 6


def test_damaged_or_misplaced_states_are_refused(states: Sha256States) -> None:
    hasher = states.new()
    hasher.update(b"x" * 70)
    state = hasher.state()
    assert states.restore(state, 70) is not None
    assert states.restore(state, 71) is None  # saved for another offset
    assert states.restore(state[:-1], 70) is None
    assert states.restore(state + b"\0", 70) is None
    assert states.restore(b"sha\x02" + state[4:], 70) is None  # SHA-224's magic
    assert states.restore(bytes(STATE_SIZE), 0) is None
    # Bytes past the pending ones must be the zeros Go writes there.
    padded = bytearray(state)
    padded[36 + 6 + 3] = 1
    assert states.restore(bytes(padded), 70) is None
