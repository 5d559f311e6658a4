"""A client process for test_lock.py: N rounds of acquire -> read/modify/write
a shared JSON file -> release, through Client.lock (the `with` form, or the
explicit handle with MODE=handle). The file plays a resource that remembers
the highest fencing token it has seen and refuses a write with a lower one;
each round also records when it entered and left the critical section
(CLOCK_MONOTONIC, shared by the processes of the machine). The sidecar's
address comes from SIDECAR_ADDR.

    python lock_worker.py KEY STATE_FILE ROUNDS WORKER_NAME PEERS [MODE]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from resilience_sidecar import Client


def wait_for_peers(state: Path, name: str, peers: int) -> None:
    """A start barrier, so that the workers really contend."""
    Path(f"{state}.ready.{name}").touch()
    deadline = time.monotonic() + 30
    while len(list(state.parent.glob(state.name + ".ready.*"))) < peers:
        if time.monotonic() > deadline:
            sys.exit(f"{name}: peers did not start within 30s")
        time.sleep(0.01)  # real time: the other processes are starting


def critical_section(state_file: Path, name: str, token: int) -> None:
    entered = time.monotonic()
    state = json.loads(state_file.read_text())
    time.sleep(0.003)  # real time: widen the read-modify-write window
    if token <= state["fence"]:
        state["refused"].append([name, token, state["fence"]])
    else:
        state["counter"] += 1
        state["fence"] = token
        state["history"].append([name, token, entered, time.monotonic()])
    tmp = state_file.with_suffix(f".{name}.tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, state_file)


def main() -> None:
    key, state_file, rounds, name, peers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    mode = sys.argv[6] if len(sys.argv) > 6 else "with"
    client = Client()  # SIDECAR_ADDR
    wait_for_peers(state_file, name, peers)
    for _ in range(rounds):
        if mode == "handle":
            lock = client.lock(key, ttl=5, wait=30, owner=name)
            if not lock.acquire():
                sys.exit(f"{name}: not acquired within the wait")
            try:
                assert lock.fencing_token is not None
                critical_section(state_file, name, lock.fencing_token)
                assert lock.owned()
            finally:
                lock.release()
        else:
            with client.lock(key, ttl=5, wait=30, owner=name) as lease:
                critical_section(state_file, name, lease.fencing_token)
                lease.check()
    client.close()
    print(f"{name}: {rounds} rounds done")


if __name__ == "__main__":
    main()
