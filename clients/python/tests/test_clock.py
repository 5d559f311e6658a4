"""Client.lamport_clock against the real sidecar."""

from __future__ import annotations

import pytest

from resilience_sidecar import Client, InvalidArgument, LimitExceeded


def test_stamps_increase_and_observe_moves_past_a_remote_stamp(client: Client, unique: str) -> None:
    clock = client.lamport_clock(f"{unique}/orders")
    assert clock.current() == 0
    a = clock.stamp()
    b = clock.stamp()
    assert 0 < a < b
    first, last = clock.reserve(5)
    assert first == b + 1 and last == first + 4
    assert clock.current() == last
    assert clock.observe(1000) == 1001  # max(current, 1000) + 1
    assert clock.observe(10) == 1002  # never backwards
    assert clock.stamp() == 1003
    other = client.lamport_clock(f"{unique}/orders")  # one counter, whoever asks
    assert other.stamp() == 1004


def test_clock_errors_are_typed(client: Client, unique: str) -> None:
    with pytest.raises(InvalidArgument):
        client.lamport_clock("").stamp()
    clock = client.lamport_clock(f"{unique}/full")
    clock.observe(2**63 - 2)
    with pytest.raises(LimitExceeded):
        clock.stamp()
