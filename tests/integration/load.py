"""Load for crash tests: a submitter that streams numbered reports to a node's Officer API
(SubmitStream over ``DATA/officer.sock``) and survives the node being killed under it.

The submitter never resubmits a report whose answer it did not see: such a report may or
may not have been committed, and sending it again would seal a second, distinct report.
What it remembers is exactly what an officer would know: the reports whose acceptance
came back (those must survive any crash), and the numbers it sent without an answer (in
doubt: present at most once, or absent on both sides).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from node.rpc._pb.accord.v1 import officer_pb2, officer_pb2_grpc

OFFICER_SOCKET = "officer.sock"
TITLE_PREFIX = "crash-load"
STREAM_DEADLINE = 600.0


def title(tag: str, number: int) -> str:
    return f"{TITLE_PREFIX} {tag} #{number:06d}"


def alert(tag: str, number: int) -> bytes:
    """A valid threat alert whose title makes it unique in this run."""
    return json.dumps(
        {
            "sop": "threat-alert@1",
            "tlp": "amber",
            "fields": {
                "title": title(tag, number),
                "threat_type": "ied",
                "severity": "high",
                "region": "Balochistan",
                "site": f"Convoy yard {number % 17}",
                "location": {"lat": 25.1264, "lon": 62.3225},
                "time_window": {"start": "2026-11-26T00:00:00Z", "end": "2026-11-30T00:00:00Z"},
                "indicators": ["white pickup"],
                "recommended_actions": ["Avoid the east gate"],
                "source": {"kind": "humint", "reliability": "B", "credibility": 2},
            },
        }
    ).encode()


def socket_answers(path: Path) -> bool:
    """True when something accepts connections on the unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


@dataclass
class Submitter:
    """Streams reports ``0, 1, 2, ...`` until ``target`` were accepted (or ``stop()``).

    ``window`` bounds the reports in flight without an answer, so a kill leaves at most
    that many in doubt; ``rate`` (reports per second, 0 for no limit) spreads them out so
    kills land while reports are still being submitted."""

    data: Path
    tag: str
    target: int
    window: int = 128
    rate: float = 0.0
    accepted: dict[int, str] = field(default_factory=dict)  # number -> report id
    refused: dict[int, str] = field(default_factory=dict)  # number -> error code
    streams: int = 0
    broken_streams: int = 0
    error: BaseException | None = None
    _next: int = 0
    _started: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def sent(self) -> int:
        return self._next

    @property
    def in_doubt(self) -> set[int]:
        """Numbers handed to a stream whose answer never came (the stream broke)."""
        return set(range(self._next)) - self.accepted.keys() - self.refused.keys()

    def start(self) -> Submitter:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="submitter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> bool:
        """Wait for the submitter; True when it finished."""
        assert self._thread is not None
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def done(self) -> bool:
        return len(self.accepted) >= self.target or self._stop.is_set()

    def _run(self) -> None:
        try:
            while not self.done:
                if not socket_answers(self.data / OFFICER_SOCKET):
                    time.sleep(0.05)  # the node is down or restarting
                    continue
                self._one_stream()
        except BaseException as e:  # reported by the test, never swallowed
            self.error = e

    def _one_stream(self) -> None:
        numbers: list[int] = []  # stream position -> report number
        answered: set[int] = set()
        slots = threading.Semaphore(self.window)
        closed = threading.Event()

        def requests() -> Iterator[officer_pb2.SubmitRequest]:
            while not closed.is_set() and not self._stop.is_set():
                outstanding = len(numbers) - len(answered)
                if len(self.accepted) + outstanding >= self.target:
                    return  # enough in flight: end the stream; a new one sends any more
                if not slots.acquire(timeout=0.1):
                    continue
                if self.rate:
                    time.sleep(max(0.0, self._started + self._next / self.rate - time.monotonic()))
                number = self._next
                self._next += 1
                numbers.append(number)
                yield officer_pb2.SubmitRequest(report=alert(self.tag, number))

        self.streams += 1
        channel = grpc.insecure_channel(f"unix:{self.data / OFFICER_SOCKET}")
        try:
            stub = officer_pb2_grpc.OfficerStub(channel)
            for answer in stub.SubmitStream(requests(), timeout=STREAM_DEADLINE):
                number = numbers[answer.index]
                answered.add(answer.index)
                slots.release()
                if answer.WhichOneof("result") == "accepted":
                    self.accepted[number] = answer.accepted.report_id
                else:
                    self.refused[number] = answer.error.code
        except grpc.RpcError:
            self.broken_streams += 1  # the node was killed (or is restarting) under us
        finally:
            closed.set()
            channel.close()
