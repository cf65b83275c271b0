"""The wire contract: generated code is current, services match docs/DESIGN.md §10, bytes survive."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from node.rpc._pb.accord.v1 import (
    card_pb2,
    envelope_pb2,
    error_pb2,
    log_pb2,
    officer_pb2,
    officer_pb2_grpc,
    peer_pb2,
    peer_pb2_grpc,
)
from tools import protogen

PEER_EXCHANGE_RPCS = {
    "GetCard",
    "Pull",
    "Acknowledge",
    "AddCheckpoint",
    "GetCheckpoint",
    "GetInclusionProof",
    "GetConsistencyProof",
}
OFFICER_RPCS = {
    "Submit",
    "SubmitStream",
    "Amend",
    "Retract",
    "ListReports",
    "GetReport",
    "ListInbox",
    "GetInbox",
    "Explain",
    "Status",
    "RotateKeys",
    "WatchInbox",
    "AckInbox",
}


def test_generated_code_is_current() -> None:
    stale = protogen.stale_files()
    assert stale == [], f"node/rpc/_pb is stale, run 'make proto': {stale}"


def test_check_names_an_edited_file(tmp_path: Path) -> None:
    copy = tmp_path / "_pb"
    shutil.copytree(protogen.OUT_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    edited = copy / "accord" / "v1" / "envelope_pb2.py"
    edited.write_text(edited.read_text("utf-8") + "# edited by hand\n", "utf-8")
    (copy / "accord" / "v1" / "leftover_pb2.py").write_text("", "utf-8")
    assert protogen.stale_files(out_dir=copy) == [
        "accord/v1/envelope_pb2.py",
        "accord/v1/leftover_pb2.py",
    ]


def test_check_command_exits_non_zero_listing_stale_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert protogen.main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "is stale" in err
    assert str(tmp_path / "accord" / "v1" / "peer_pb2.py") in err


def test_check_command_passes_on_the_committed_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert protogen.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_generated_code_imports_as_part_of_node_only() -> None:
    # The rewritten imports are package-relative: no top-level 'accord' module is needed.
    assert "accord" not in sys.modules
    assert envelope_pb2.DESCRIPTOR.name == "accord/v1/envelope.proto"
    assert envelope_pb2.DESCRIPTOR.package == "accord.v1"


def _rpcs(service: ServiceDescriptor) -> set[str]:
    return {method.name for method in service.methods}


def test_services_have_exactly_the_rpcs_of_the_design() -> None:
    peer = peer_pb2.DESCRIPTOR.services_by_name["PeerExchange"]
    officer = officer_pb2.DESCRIPTOR.services_by_name["Officer"]
    assert peer.full_name == "accord.v1.PeerExchange"
    assert officer.full_name == "accord.v1.Officer"
    assert _rpcs(peer) == PEER_EXCHANGE_RPCS
    assert _rpcs(officer) == OFFICER_RPCS
    assert hasattr(peer_pb2_grpc, "PeerExchangeStub")
    assert hasattr(officer_pb2_grpc, "add_OfficerServicer_to_server")


def test_streaming_shapes() -> None:
    peer = peer_pb2.DESCRIPTOR.services_by_name["PeerExchange"]
    officer = officer_pb2.DESCRIPTOR.services_by_name["Officer"]
    streaming = {
        (s.name, m.name): (m.client_streaming, m.server_streaming)
        for s in (peer, officer)
        for m in s.methods
        if m.client_streaming or m.server_streaming
    }
    assert streaming == {
        ("PeerExchange", "Pull"): (False, True),
        ("Officer", "SubmitStream"): (True, True),
        ("Officer", "WatchInbox"): (False, True),
    }
    pull = peer.methods_by_name["Pull"]
    assert pull.output_type.full_name == "accord.v1.EnvelopeBatch"


def test_signed_things_travel_as_opaque_bytes() -> None:
    signed: dict[type[Message], tuple[str, ...]] = {
        envelope_pb2.Envelope: ("header", "ciphertext", "signature"),
        envelope_pb2.BatchReceipt: ("statement", "signature"),
        card_pb2.NodeCard: ("card", "signature"),
        card_pb2.Revocation: ("statement", "signature"),
        log_pb2.Checkpoint: ("note",),
        log_pb2.AddCheckpointResponse: ("cosignature_lines",),
    }
    for message, names in signed.items():
        fields = message.DESCRIPTOR.fields_by_name
        for name in names:
            assert fields[name].type == FieldDescriptor.TYPE_BYTES, (message, name)


def test_envelope_round_trip_keeps_exact_bytes() -> None:
    # Header bytes that a JSON re-encoder would change (key order, escapes, spacing) and
    # binary ciphertext with every byte value: both must come back unchanged.
    header = b'{"type":"accord.envelope/v1","seq":1,"id":"\\u00e9","to":"cn-mps","from":"pk-moi"}'
    ciphertext = bytes(range(256)) * 3
    signature = b"\x00" * 63 + b"\xff"
    sent = envelope_pb2.Envelope(header=header, ciphertext=ciphertext, signature=signature)
    batch = envelope_pb2.EnvelopeBatch(envelopes=[sent, sent], caught_up=True)

    received = envelope_pb2.EnvelopeBatch.FromString(batch.SerializeToString())

    assert received == batch
    assert received.caught_up is True
    assert len(received.envelopes) == 2
    for envelope in received.envelopes:
        assert envelope.header == header
        assert envelope.ciphertext == ciphertext
        assert envelope.signature == signature


def test_add_checkpoint_response_is_cosignature_or_conflict() -> None:
    conflict = log_pb2.AddCheckpointResponse(conflict=log_pb2.CheckpointConflict(size=0))
    parsed = log_pb2.AddCheckpointResponse.FromString(conflict.SerializeToString())
    # Size 0 (the witness holds nothing yet) is still a conflict, not an empty answer.
    assert parsed.WhichOneof("result") == "conflict"
    assert parsed.conflict.size == 0

    lines = "— cn-mps.accord/witness AAAA\n".encode()
    ok = log_pb2.AddCheckpointResponse(cosignature_lines=lines)
    parsed = log_pb2.AddCheckpointResponse.FromString(ok.SerializeToString())
    assert parsed.WhichOneof("result") == "cosignature_lines"
    assert parsed.cosignature_lines == lines


def test_error_detail_round_trip() -> None:
    detail = error_pb2.ErrorDetail(code="peer.invalid", correlation_id="01J0000000000000")
    assert error_pb2.ErrorDetail.FromString(detail.SerializeToString()) == detail
