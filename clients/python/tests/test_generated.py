"""The committed stubs are self-contained and keep the proto's names and
semantics (edition 2023 files with implicit presence included)."""

from __future__ import annotations

import subprocess
import sys


def test_stubs_import_without_a_top_level_resilience_package() -> None:
    code = (
        "import sys\n"
        "from resilience_sidecar.v1 import (breaker_pb2_grpc, clock_pb2_grpc, idempotency_pb2_grpc, lock_pb2_grpc)\n"
        "import resilience_sidecar\n"
        "assert 'resilience' not in sys.modules, 'generated code imports the bare resilience package'\n"
        "print(lock_pb2_grpc.LockServiceStub.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "LockServiceStub"


def test_descriptors_keep_the_proto_names_and_presence() -> None:
    from resilience_sidecar.v1 import idempotency_pb2, lock_pb2

    assert lock_pb2.DESCRIPTOR.name == "resilience/v1/lock.proto"
    assert lock_pb2.DESCRIPTOR.package == "resilience.v1"
    assert lock_pb2.DESCRIPTOR.services_by_name["LockService"].full_name == "resilience.v1.LockService"
    # edition 2023 with field_presence IMPLICIT: scalars have no presence,
    # messages and oneof members do.
    lease = lock_pb2.Lease.DESCRIPTOR.fields_by_name
    assert not lease["key"].has_presence and lease["expire_time"].has_presence
    assert lock_pb2.HoldLockRequest.DESCRIPTOR.fields_by_name["acquire"].has_presence
    # idempotency.proto: the same rules, whichever syntax its file uses.
    assert not idempotency_pb2.CheckOrRecordIdempotencyRequest.DESCRIPTOR.fields_by_name["key"].has_presence
