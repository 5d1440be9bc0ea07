"""The kernel's private wire proto (engine/kernel/proto/usage_wire.proto) against the public messages it decodes
and encodes: every field of each side exists on the other with the same number and a wire-compatible type (a
public `map<K, V>` is the private `repeated Entry { K key = 1; V value = 2; }`). A drift would make the kernel
misread requests or write answers clients cannot read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from tariff.v1 import balance_pb2, usage_pb2

from tests.serverproc import REPO_ROOT

WIRE_PROTO_DIR = REPO_ROOT / "engine" / "kernel" / "proto"
PAIRS = [
    (usage_pb2.UsageEvent, "UsageEvent"),
    (usage_pb2.UsageBatch, "UsageBatch"),
    (usage_pb2.EventRejection, "EventRejection"),
    (usage_pb2.IngestAck, "IngestAck"),
    (balance_pb2.AuthorizeRequest, "AuthorizeRequest"),
    (balance_pb2.AuthorizeBatch, "AuthorizeBatch"),
    (balance_pb2.AuthorizeResponse, "AuthorizeResponse"),
    (balance_pb2.AuthorizeBatchResult, "AuthorizeBatchResult"),
]
T = descriptor_pb2.FieldDescriptorProto
# Public scalar types and the private ones encoded the same way (an enum is a varint, as int32 is).
SAME_ENCODING = {FieldDescriptor.TYPE_ENUM: T.TYPE_INT32}


@pytest.fixture(scope="module")
def wire_messages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, descriptor_pb2.DescriptorProto]:
    out = tmp_path_factory.mktemp("wire") / "usage_wire.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{WIRE_PROTO_DIR}",
            f"--descriptor_set_out={out}",
            "usage_wire.proto",
        ],
        check=True,
    )
    files = descriptor_pb2.FileDescriptorSet.FromString(Path(out).read_bytes())
    return {m.name: m for f in files.file for m in f.message_type}


def signature(field: Any) -> tuple[int, int, bool]:  # protobuf's python and upb descriptors, typed apart
    """(number, type, repeated) of a public field; a map field as its repeated entry message."""
    kind = SAME_ENCODING.get(field.type, field.type)
    return field.number, kind, field.is_repeated


@pytest.mark.parametrize(("public", "name"), PAIRS, ids=[name for _, name in PAIRS])
def test_the_private_message_reads_and_writes_the_public_one(
    wire_messages: dict[str, descriptor_pb2.DescriptorProto], public: type[Message], name: str
) -> None:
    private = wire_messages[name]
    public_fields = {f.name: signature(f) for f in public.DESCRIPTOR.fields}
    private_fields = {f.name: (f.number, f.type, f.label == T.LABEL_REPEATED) for f in private.field}
    assert public_fields == private_fields
    for field in public.DESCRIPTOR.fields:
        entry = field.message_type
        if entry is None:
            continue
        private_entry = wire_messages[next(f for f in private.field if f.name == field.name).type_name.split(".")[-1]]
        assert {f.name: signature(f) for f in entry.fields} == {
            f.name: (f.number, f.type, f.label == T.LABEL_REPEATED) for f in private_entry.field
        }, f"{name}.{field.name}"
