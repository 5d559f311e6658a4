"""A client process for test_lock.py: N rounds of acquire -> read/modify/write
a shared JSON file -> release, through Client.lock. The file plays a resource
that remembers the highest fencing token it has seen and refuses a write with
a lower one. The sidecar's address comes from SIDECAR_ADDR.

    python lock_worker.py KEY STATE_FILE ROUNDS WORKER_NAME PEERS
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
        time.sleep(0.01)


def main() -> None:
    key, state_file, rounds, name, peers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    client = Client()  # SIDECAR_ADDR
    wait_for_peers(state_file, name, peers)
    for _ in range(rounds):
        with client.lock(key, ttl=5, wait=30, owner=name) as lease:
            state = json.loads(state_file.read_text())
            time.sleep(0.003)  # widen the read-modify-write window
            if lease.fencing_token <= state["fence"]:
                state["refused"].append([name, lease.fencing_token, state["fence"]])
            else:
                state["counter"] += 1
                state["fence"] = lease.fencing_token
                state["history"].append([name, lease.fencing_token])
            tmp = state_file.with_suffix(f".{name}.tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, state_file)
            lease.check()
    client.close()
    print(f"{name}: {rounds} rounds done")


if __name__ == "__main__":
    main()
