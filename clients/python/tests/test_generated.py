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


def test_stubs_match_the_dependency_floors_of_pyproject() -> None:
    """The stubs come from grpcio-tools 1.63.0 (gencode 5.26.1, no runtime
    version check): pyproject's floors must not be lower than what they need,
    and the runtime check of newer gencode must not creep in (it would refuse
    older runtimes: README, "Dependency ranges")."""
    import re
    from pathlib import Path

    here = Path(__file__).resolve().parents[1]
    pyproject = (here / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[\n(.*?)^\]", pyproject, re.M | re.S)
    assert block, "no dependencies list in pyproject.toml"
    deps = dict(re.findall(r'^\s+"([a-z-]+)>=([0-9.]+),<[0-9]+",$', block.group(1), re.M))
    assert deps == {
        "grpcio": "1.63.0",
        "protobuf": "5.26.1",
        "googleapis-common-protos": "1.63.1",
        "grpcio-health-checking": "1.63.0",
    }, deps
    v1 = here / "resilience_sidecar" / "v1"
    pb2 = sorted(v1.glob("*_pb2.py"))
    grpc_files = sorted(v1.glob("*_pb2_grpc.py"))
    assert len(pb2) == len(grpc_files) >= 8
    for f in pb2:
        text = f.read_text()
        assert "# Protobuf Python Version: 5.26.1\n" in text, f.name
        assert "ValidateProtobufRuntimeVersion" not in text, f.name
    for f in grpc_files:
        assert f"GRPC_GENERATED_VERSION = '{deps['grpcio']}'" in f.read_text(), f.name


def test_stubs_run_on_the_installed_runtime() -> None:
    """Round trip of an edition 2023 message with the features the protos set
    (implicit presence; utf8_validation NONE: the sidecar, not the parser,
    refuses bad UTF-8), on whichever protobuf this venv has."""
    from resilience_sidecar.v1 import lock_pb2

    req = lock_pb2.AcquireLockRequest(key="k", owner="o")
    req.ttl.seconds = 3
    back = lock_pb2.AcquireLockRequest.FromString(req.SerializeToString())
    assert back.key == "k" and back.ttl.seconds == 3 and back.HasField("ttl")
    # Field 1 (key) with the bytes ff fe: accepted by the parser.
    lock_pb2.AcquireLockRequest.FromString(b"\n\x02\xff\xfe")
