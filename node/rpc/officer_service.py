"""The Officer API on the local unix socket: submit, amend, retract, read reports and the
inbox, explain decisions, status. Thin handlers over node functions (docs/DESIGN.md §10)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import Any

import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from exchange.ack import parse_ack_unverified
from exchange.canonical import b64_decode
from exchange.deadlines import Deadline
from exchange.errors import AccordError, InputError, PeerDataError, StoreError
from exchange.sdjwt import PresentationLimits, verify_presentation, verify_retraction
from exchange.sop import Report, ValidReport, check_report_document
from exchange.times import format_time, parse_time
from node import clock
from node.home import Node
from node.rpc import tls_policy
from node.rpc._pb.accord.v1 import error_pb2, officer_pb2, officer_pb2_grpc
from node.rpc.cosigning import Cosigner
from node.rpc.leadership import Leadership, leader_fields, standby_error
from node.rpc.sync import OutboxSignal, Puller
from node.rpc.wire import (
    ack_sent_message,
    expiry_warning_message,
    inbox_message,
    outcome_from_event,
    outcome_message,
    rotated_message,
    rotation_from_message,
    submitted_message,
    thread_message,
    timestamp,
    timestamp_of,
)
from node.services import outbox, warning
from node.services.agreements import current_agreement
from node.services.cap import ack_for_item as cap_ack
from node.services.cap import inbox_cap
from node.services.inbox import (
    InboxItem,
    cursor,
    get_inbox,
    inbox_last_row,
    inbox_rows_after,
    list_inbox_records,
    received_acks,
    rejections,
    resolve_envelope_id,
    retraction_of,
)
from node.services.keywatch import WARN_DAYS, expiry_warnings
from node.services.policy import active_policy, decide_for
from node.services.reports import list_reports, load_sealed, resolve_report_id
from node.services.schemas import registry
from node.services.stix import stix_source, to_stix_bundle
from node.services.witness import grown_at as witness_grown_at
from node.values import Submitted

log = structlog.get_logger("accord.officer")

Context = Any
MAX_PAGE = 500
STREAM_CHUNK = 256
STALE_AFTER = timedelta(minutes=15)
# WatchInbox reads the inbox table by rowid this often (rows another process stored too),
# and sooner when a batch applied in this process wakes it.
WATCH_POLL_SECONDS = 0.5
WATCH_BATCH = 256


def software_version() -> str:
    try:
        return metadata.version("accord-exchange")
    except metadata.PackageNotFoundError:
        return "unknown"


def _timestamp(at: datetime | None) -> Timestamp | None:
    if at is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


# GetInboxRequest.form: "" every derived form (older clients), else only the one named.
INBOX_FORMS = frozenset({"", "json", "stix", "cap"})


class OfficerService(officer_pb2_grpc.OfficerServicer):
    """The local Officer API. Only Status is served here; every other RPC is inherited
    from the generated base and fails with UNIMPLEMENTED and the code "unimplemented"
    until the report pipeline adds it (subclass this and pass it to ``NodeServer``)."""

    def __init__(self, node: Node, cosigner: Cosigner | None) -> None:
        self._node = node
        self._cosigner = cosigner
        self.leadership: Leadership | None = None  # set by a serve on PostgreSQL

    async def Status(
        self, request: officer_pb2.StatusRequest, context: Any
    ) -> officer_pb2.StatusResponse:
        node = self._node
        cp = node.log.latest_checkpoint()
        states = self._cosigner.state if self._cosigner is not None else {}
        peers = []
        for record in node.trust_store().list():
            state = states.get(record.node)
            peers.append(
                officer_pb2.PeerStatus(
                    peer=record.node,
                    cosigned_size=node.cosigned_size(record.node),
                    last_contact=_timestamp(state.last_contact if state else None),
                    last_error_code=state.last_error_code if state else "",
                )
            )
        problem_code, problem = "", ""
        try:
            node.check_log()
        except AccordError as e:
            problem_code, problem = e.code, e.diagnostics()
        return officer_pb2.StatusResponse(
            node=node.config.node,
            version=software_version(),
            log_size=node.log.size(),
            checkpoint_size=0 if cp is None else cp.size,
            peers=peers,
            tls12_refused=tls_policy.TLS12_REFUSED,
            log_problem_code=problem_code,
            log_problem=problem,
            **leader_fields(self.leadership, node),
        )


def report_format(data: bytes) -> str:
    return "json" if data.lstrip()[:1] in (b"{", b"[") else "toml"


def validate(data: bytes) -> ValidReport:
    return check_report_document(registry(), data, report_format(data))  # type: ignore[arg-type]


class StandbyOfficer(officer_pb2_grpc.OfficerServicer):
    """The Officer API of a standby (docs/adr/0026): Status only, from the database and
    without the key file; every other RPC is refused with ``server.standby``, naming the
    leader. A standby signs, sends and applies nothing, so it has nothing else to offer."""

    def __init__(self, node: Node, leadership: Leadership) -> None:
        self._node = node
        self.leadership = leadership

    async def Status(
        self, request: officer_pb2.StatusRequest, context: Any
    ) -> officer_pb2.StatusResponse:
        node = self._node
        with node.store.read_snapshot():
            cp = node.log.latest_checkpoint()
            return officer_pb2.StatusResponse(
                node=node.config.node,
                version=software_version(),
                log_size=node.log.size(),
                checkpoint_size=0 if cp is None else cp.size,
                tls12_refused=tls_policy.TLS12_REFUSED,
                **leader_fields(self.leadership, node),
            )


def _refuse_as_standby(name: str) -> Callable[..., Any]:
    async def refuse(self: StandbyOfficer, request: Any, context: Any) -> Any:
        raise standby_error(self._node)

    refuse.__name__ = name
    return refuse


for _method in officer_pb2.DESCRIPTOR.services_by_name["Officer"].methods:
    if _method.name != "Status":
        setattr(StandbyOfficer, _method.name, _refuse_as_standby(_method.name))


class ExchangeOfficerService(OfficerService):
    def __init__(
        self,
        node: Node,
        cosigner: Cosigner | None,
        *,
        signal: OutboxSignal | None = None,
        puller: Puller | None = None,
        now: Callable[[], datetime] = clock.now,
        stale_after: timedelta = STALE_AFTER,
        classical_tls_allowed: frozenset[str] = frozenset(),
        on_keys_rotated: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(node, cosigner)
        self._classical_ok = classical_tls_allowed
        self._on_keys_rotated = on_keys_rotated
        self._signal = signal
        self._puller = puller
        self._now = now
        self._stale_after = stale_after  # docs/THREATS.md P03: the configured staleness window
        self._watchers: set[asyncio.Event] = set()  # open WatchInbox streams (ADR 0021)
        self._closing = False

    def _committed(self, results: list[Submitted]) -> None:
        peers = sorted({r.peer for s in results for r in s.releases if r.envelope_id})
        if self._signal is not None and peers:
            self._signal.notify(peers)
        if self._cosigner is not None:
            self._cosigner.poke()

    async def Submit(
        self, request: officer_pb2.SubmitRequest, context: Context
    ) -> officer_pb2.SubmitResponse:
        key = _idempotency_key(request.idempotency_key)
        earlier = self._replay(key)
        if earlier is not None:
            return earlier
        valid = validate(request.report)
        results = outbox.submit(self._node, [valid], self._now(), [key])
        self._committed(results)
        return self._with_delivery(submitted_message(results[0]))

    def _with_delivery(self, msg: officer_pb2.SubmitResponse) -> officer_pb2.SubmitResponse:
        """Say, per partner that got an envelope, whether it is connected to take it now."""
        for release in msg.releases:
            release.partner_connected = bool(
                release.envelope_id
                and self._signal is not None
                and self._signal.is_following(release.peer)
            )
        return msg

    def _replay(self, key: str | None) -> officer_pb2.SubmitResponse | None:
        """A retried submission (same idempotency key) gets the first answer again."""
        found = None if key is None else outbox.already_submitted(self._node, key)
        if found is None:
            return None
        report_id, version = found
        return officer_pb2.SubmitResponse(
            report_id=report_id,
            version=version,
            releases=[
                outcome_from_event(e) for e in _release_events(self._node, report_id, version)
            ],
        )

    async def SubmitStream(
        self, request_iterator: AsyncIterator[officer_pb2.SubmitRequest], context: Context
    ) -> AsyncIterator[officer_pb2.SubmitStreamResponse]:
        """Many reports: validated one by one, committed in chunks of up to 256 (one
        durable commit per chunk), answered in order after their commit."""
        queue: asyncio.Queue[officer_pb2.SubmitRequest | None] = asyncio.Queue(
            maxsize=STREAM_CHUNK * 2
        )

        async def read() -> None:
            async for req in request_iterator:
                await queue.put(req)
            await queue.put(None)

        reader = asyncio.create_task(read())
        index = 0
        try:
            done = False
            while not done:
                first = await queue.get()
                if first is None:
                    break
                chunk = [first]
                while len(chunk) < STREAM_CHUNK and not queue.empty():
                    item = queue.get_nowait()
                    if item is None:
                        done = True
                        break
                    chunk.append(item)
                answers: list[officer_pb2.SubmitStreamResponse | None] = []
                good: list[ValidReport] = []
                keys: list[str | None] = []
                for req in chunk:
                    try:
                        key = _idempotency_key(req.idempotency_key)
                        earlier = self._replay(key)
                        if earlier is not None:
                            answers.append(
                                officer_pb2.SubmitStreamResponse(
                                    index=index + len(answers), accepted=earlier
                                )
                            )
                            continue
                        good.append(validate(req.report))
                        keys.append(key)
                        answers.append(None)
                    except AccordError as e:
                        answers.append(
                            officer_pb2.SubmitStreamResponse(
                                index=index + len(answers),
                                error=error_pb2.ErrorDetail(
                                    code=e.code, message=e.message, next_step=e.next_step
                                ),
                            )
                        )
                results = outbox.submit(self._node, good, self._now(), keys) if good else []
                self._committed(results)
                it = iter(results)
                for answer in answers:
                    yield answer or officer_pb2.SubmitStreamResponse(
                        index=index, accepted=submitted_message(next(it))
                    )
                    index += 1
        finally:
            reader.cancel()

    async def Amend(
        self, request: officer_pb2.AmendRequest, context: Context
    ) -> officer_pb2.AmendResponse:
        valid = validate(request.report)
        report_id = resolve_report_id(self._node, request.report_id)
        result = outbox.amend(
            self._node, report_id, valid, self._now(), request.base_version or None
        )
        self._committed([result])
        msg = self._with_delivery(submitted_message(result))
        return officer_pb2.AmendResponse(
            report_id=msg.report_id, version=msg.version, releases=msg.releases
        )

    async def Retract(
        self, request: officer_pb2.RetractRequest, context: Context
    ) -> officer_pb2.RetractResponse:
        report_id = resolve_report_id(self._node, request.report_id)
        sent = outbox.retract(self._node, report_id, request.reason or "withdrawn", self._now())
        if self._signal is not None:
            self._signal.notify([p for p, _e, _s in sent])
        if self._cosigner is not None:
            self._cosigner.poke()
        return officer_pb2.RetractResponse(
            report_id=report_id,
            envelopes=[
                officer_pb2.RetractionEnvelope(peer=p, envelope_id=e, seq=s) for p, e, s in sent
            ],
        )

    async def ListReports(
        self, request: officer_pb2.ListReportsRequest, context: Context
    ) -> officer_pb2.ListReportsResponse:
        limit = min(request.limit or 50, MAX_PAGE)
        now = self._now()
        rows = [
            r
            for r in list_reports(self._node, limit=MAX_PAGE)
            if not request.sop or r.sop == request.sop
        ]
        retracted = self._node.store.reports.retracted_ids()
        return officer_pb2.ListReportsResponse(
            reports=[
                officer_pb2.ReportSummary(
                    report_id=r.report_id,
                    version=r.version,
                    sop=r.sop,
                    tlp=r.tlp,
                    sealed_at=timestamp(r.sealed_at),
                    retracted=r.report_id in retracted,
                    deliveries=_deliveries(self._node, r.report_id, r.version, now),
                )
                for r in rows[:limit]
            ]
        )

    async def GetReport(
        self, request: officer_pb2.GetReportRequest, context: Context
    ) -> officer_pb2.GetReportResponse:
        node = self._node
        report_id = resolve_report_id(node, request.report_id)
        sealed = load_sealed(node, report_id, request.version or None)
        key = node.store.reports.key_and_times(sealed.report_id, sealed.version)
        verified = verify_presentation(
            sealed.full_presentation(), bytes(key[0]), limits=PresentationLimits()
        )
        versions = node.store.reports.versions(sealed.report_id)
        events = _release_events(node, sealed.report_id, sealed.version)
        releases = [outcome_from_event(e) for e in events]
        now = self._now()
        answered = verified.fields.get("in_reply_to") if verified.sop == warning.REPLY_SOP else None
        thread = thread_message(
            received_acks(node, report_id=sealed.report_id),
            warning.replies(node, in_reply_to=sealed.report_id),
            warning.deadlines(node, incoming=False, report_id=sealed.report_id),
            now,
            answered if isinstance(answered, str) else "",
        )
        return officer_pb2.GetReportResponse(
            thread=thread,
            summary=officer_pb2.ReportSummary(
                report_id=sealed.report_id,
                version=sealed.version,
                sop=verified.sop,
                tlp=verified.tlp,
                sealed_at=timestamp(key[1]),
                retracted=key[2] is not None,
                deliveries=_deliveries(node, sealed.report_id, sealed.version, now),
            ),
            report=json.dumps(
                {"sop": verified.sop, "tlp": verified.tlp, "fields": dict(verified.fields)}
            ).encode(),
            releases=releases,
            versions=versions,
        )

    async def ListInbox(
        self, request: officer_pb2.ListInboxRequest, context: Context
    ) -> officer_pb2.ListInboxResponse:
        limit = min(request.limit or 50, MAX_PAGE)
        state = request.state or ""
        if state not in ("", "current", "superseded", "retracted", "due", "overdue", "unread"):
            raise InputError(
                "state must be current, superseded, retracted, due, overdue or unread",
                code="input.invalid",
            )
        wanted = request.offset + limit + 1
        matched: list[tuple[InboxItem, dict[str, Any]]] = []
        before = request.page_token or None
        newest: dict[str, int] = {}
        for _ in range(MAX_SCAN // MAX_PAGE):  # a bounded scan: filters need the fields
            records = list_inbox_records(
                self._node, peer=request.peer or None, limit=MAX_PAGE, before=before
            )
            batch = [item for item, _content in records]
            for report_id, version in _newest_versions(batch).items():
                newest[report_id] = max(version, newest.get(report_id, 0))
            for item, content in records:
                if request.sop and item.sop != request.sop:
                    continue
                shown = _title_and_severity(self._node, item, content)
                if _matches(item, shown, newest, request, state):
                    matched.append((item, shown))
            if len(matched) >= wanted or len(batch) < MAX_PAGE:
                break
            before = batch[-1].envelope_id
        now = self._now()
        loop = _inbox_loop(self._node)
        if request.state in ("due", "overdue", "unread"):
            matched = [(i, s) for i, s in matched if _loop_match(i, loop, request.state, now)]
        matched.sort(key=lambda m: _urgency(loop, m[0], now))
        page = matched[request.offset : request.offset + limit]
        more = len(matched) > request.offset + limit
        for shown_item, _shown in page:
            acks = warning.sent_acks(self._node, item_envelope_id=shown_item.envelope_id)
            if acks:
                loop.acked[shown_item.envelope_id] = acks[-1].ack.status
        return officer_pb2.ListInboxResponse(
            items=[
                inbox_message(
                    i,
                    newest,
                    s,
                    due=loop.due.get(i.envelope_id),
                    now=now,
                    unread=i.envelope_id not in loop.read,
                    ack_status=loop.acked.get(i.envelope_id, ""),
                )
                for i, s in page
            ],
            next_page_token=page[-1][0].envelope_id if more else "",
        )

    async def GetInbox(
        self, request: officer_pb2.GetInboxRequest, context: Context
    ) -> officer_pb2.GetInboxResponse:
        item, content = get_inbox(self._node, resolve_envelope_id(self._node, request.envelope_id))
        fields = _fields_as_received(self._node, item, content)
        derived = {d["field"]: d["value"] for d in content.get("derived", [])}
        retraction = _retraction_shown(self._node, item) if item.retracted else None
        body = {
            "sop": item.sop,
            "tlp": item.tlp,
            "fields": fields,
            "derived": derived,
            "presentation": content.get("presentation", ""),
            "release": content.get("release", ""),
            "retraction": retraction,
        }
        form = request.form
        if form not in INBOX_FORMS:
            raise InputError(
                f"form {form!r} is not one of {', '.join(sorted(INBOX_FORMS - {''}))}",
                code="inbox.bad_form",
                next_step="Ask for json, stix or cap (or leave form empty for all).",
            )
        if form in ("", "stix"):  # the STIX 2.1 form (services/stix.py), as the feed serves
            try:
                body["stix"] = to_stix_bundle(
                    stix_source(self._node, item.envelope_id, self._now())
                )
            except AccordError as e:  # shown and exported as before; only STIX is missing
                body["stix_error"] = e.code
        if form in ("", "cap"):  # the OASIS CAP 1.2 form (services/cap.py)
            try:
                body["cap"] = inbox_cap(
                    self._node, item, fields=fields, derived=derived, retraction=retraction
                )
            except AccordError as e:  # only the CAP form is missing
                body["cap_error"] = e.code
        now = self._now()
        node = self._node
        due = warning.deadlines(node, incoming=True, peer=item.peer, envelope_id=item.envelope_id)
        acks = warning.sent_acks(node, item_envelope_id=item.envelope_id)
        in_reply_to = fields.get("in_reply_to") if item.sop == warning.REPLY_SOP else None
        thread = thread_message(
            acks,
            warning.replies(node, in_reply_to=item.report_id),
            due,
            now,
            in_reply_to if isinstance(in_reply_to, str) else "",
        )
        unread = item.envelope_id not in warning.read_ids(node)
        if request.mark_read:  # shown to an officer (inbox show): read
            warning.mark_read(node, item.envelope_id, now)
        if acks and "cap" in body:  # our acknowledgements as CAP Ack messages
            body["cap_acks"] = [cap_ack(node, item, a.ack) for a in acks]
        return officer_pb2.GetInboxResponse(
            thread=thread,
            item=inbox_message(
                item,
                _newest_versions([item]),
                due=due[0] if due else None,
                now=now,
                unread=unread,
                ack_status=acks[-1].ack.status if acks else "",
            ),
            report=json.dumps(body).encode(),
            transformed=[
                officer_pb2.TransformedField(field=f, transform=t)
                for f, t in sorted(item.transformed.items())
            ],
        )

    def inbox_changed(self) -> None:
        """A batch was applied in this process: wake every WatchInbox stream now."""
        for wake in self._watchers:
            wake.set()

    def close(self) -> None:
        """The server is stopping: every WatchInbox stream ends cleanly (status OK)."""
        self._closing = True
        self.inbox_changed()

    async def WatchInbox(
        self, request: officer_pb2.WatchInboxRequest, context: Context
    ) -> AsyncGenerator[officer_pb2.InboxEvent, None]:
        """Each inbox row stored from now on (or after ``request.after``), as it is stored;
        within one poll critical items first. Ends when the server stops."""
        node = self._node
        since_now = request.since_now if request.HasField("since_now") else True
        after = request.after or (inbox_last_row(node) if since_now else 0)
        wake = asyncio.Event()
        self._watchers.add(wake)
        try:
            yield officer_pb2.InboxEvent(resume_after=after)  # connected: where it starts
            while not self._closing:
                last, rows = inbox_rows_after(node, after, WATCH_BATCH)
                events = [e for r in rows if (e := _watch_event(node, *r)) is not None]
                events.sort(key=lambda e: (not e.critical, e.cursor))
                for event in events:
                    event.resume_after = after
                if events:
                    events[-1].resume_after = last
                for event in events:
                    yield event
                more = len(rows) == WATCH_BATCH and last > after
                after = last
                if more:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), WATCH_POLL_SECONDS)
                wake.clear()
        finally:
            self._watchers.discard(wake)

    async def Explain(
        self, request: officer_pb2.ExplainRequest, context: Context
    ) -> officer_pb2.ExplainResponse:
        node = self._node
        now = self._now()
        if request.WhichOneof("subject") == "report_id":
            sealed = load_sealed(node, resolve_report_id(node, request.report_id))
            key = node.store.reports.issuer_key(sealed.report_id, sealed.version)
            v = verify_presentation(
                sealed.full_presentation(), bytes(key), limits=PresentationLimits()
            )
            report = Report(v.sop, v.tlp, dict(v.fields))
        else:
            report = validate(request.report).report
        peers = list(request.peers) or [r.node for r in node.trust_store().list()]
        policy = active_policy(node, now)
        return officer_pb2.ExplainResponse(
            decisions=[
                outcome_message(p, decide_for(node, report, p, now, policy), None, None)
                for p in peers
            ]
        )

    async def RotateKeys(
        self, request: officer_pb2.RotateKeysRequest, context: Context
    ) -> officer_pb2.RotateKeysResponse:
        """Rotate keys in the serving process (ADR 0017): the keyring in memory is
        replaced, the server's TLS credentials and partner channels follow at their next
        refresh, partners learn the new card over GetCard."""
        kinds, suite = rotation_from_message(request)
        previous = self._node.own_chain().latest.fingerprint
        chain = self._node.rotate_keys(self._now(), kinds, suite=suite)
        if self._on_keys_rotated is not None:
            self._on_keys_rotated()
        return rotated_message(chain, previous, kinds)

    async def AckInbox(
        self, request: officer_pb2.AckInboxRequest, context: Context
    ) -> officer_pb2.AckInboxResponse:
        node = self._node
        envelope_id = resolve_envelope_id(node, request.envelope_id)
        sent = warning.acknowledge(
            node,
            envelope_id,
            request.status,
            request.officer,
            request.note or None,
            self._now(),
        )
        if self._signal is not None:
            self._signal.notify([sent.peer])
        if self._cosigner is not None:
            self._cosigner.poke()
        connected = self._signal is not None and self._signal.is_following(sent.peer)
        return ack_sent_message(sent, connected)

    async def Status(
        self, request: officer_pb2.StatusRequest, context: Context
    ) -> officer_pb2.StatusResponse:
        base = await super().Status(request, context)
        node, now = self._node, self._now()
        pulls = self._puller.state if self._puller is not None else {}
        rejected: dict[str, int] = {}
        for peer, _seq, _code in rejections(node):
            rejected[peer] = rejected.get(peer, 0) + 1
        for peer, count in node.store.inbox.evidence_counts():  # kept as evidence (P07)
            rejected[peer] = rejected.get(peer, 0) + count
        for peer, count in node.store.inbox.suppressed_counts():  # beyond the budget (L06)
            rejected[peer] = rejected.get(peer, 0) + count
        overdue_in: dict[str, int] = {}
        overdue_out: dict[str, int] = {}
        for d in warning.deadlines(node, which="unfinished"):
            if d.summary(now) == "OVERDUE":
                counts = overdue_in if d.incoming else overdue_out
                counts[d.peer] = counts.get(d.peer, 0) + 1
        warnings: dict[str, list[officer_pb2.ExpiryWarning]] = {}
        for w in sorted(
            expiry_warnings(node, now, request.warn_days or WARN_DAYS), key=lambda w: w.not_after
        ):
            warnings.setdefault(w.peer, []).append(expiry_warning_message(w, now))
        peers = []
        for status in base.peers:
            status.expiry_warnings.extend(warnings.get(status.peer, []))
            sent, acked = outbox.backlog(node, status.peer)
            agreement = current_agreement(node, status.peer, now)
            pull = pulls.get(status.peer)
            status.outbox_seq = sent
            status.acknowledged_seq = acked
            status.backlog = sent - acked
            status.inbox_seq = cursor(node, status.peer)
            status.rejected = rejected.get(status.peer, 0)
            status.partner_overdue = overdue_out.get(status.peer, 0)
            status.our_overdue = overdue_in.get(status.peer, 0)
            status.agreement_valid = agreement is not None
            status.classical_tls_allowed = status.peer in self._classical_ok
            not_after = timestamp(agreement.agreement.not_after) if agreement is not None else None
            if not_after is not None:
                status.agreement_not_after.CopyFrom(not_after)
            if pull is not None:
                status.connected = pull.connected
                last_sync = timestamp_of(pull.last_sync)
                if last_sync is not None:
                    status.last_sync.CopyFrom(last_sync)
                if pull.last_error_code and not status.last_error_code:
                    status.last_error_code = pull.last_error_code
            contact = (
                status.last_contact.ToDatetime(tzinfo=UTC)
                if status.HasField("last_contact")
                else None
            )
            status.stale = agreement is not None and (
                contact is None
                or now - contact > self._stale_after
                or _frozen(node, status.peer, self._stale_after)
            )
            peers.append(status)
        del base.peers[:]
        base.peers.extend(peers)
        return base


def _frozen(node: Node, peer: str, window: timedelta) -> bool:
    """docs/THREATS.md P03: the partner acknowledged our envelopes (so its log grew with
    receipt.sent events) but the checkpoint it asks us to cosign has not grown for longer
    than the window: it is serving a frozen view."""
    grown_at = witness_grown_at(node.store, peer)
    receipt = node.store.outbox.last_receipt_received_at(peer)
    if grown_at is None or receipt is None:
        return False
    grown = parse_time(grown_at, field="grown_at")
    return parse_time(receipt, field="receipt at") - grown > window


def _idempotency_key(key: str) -> str | None:
    if not key:
        return None
    if len(key) > 128 or not key.isascii() or not key.isprintable():
        raise InputError("idempotency key must be 1-128 printable ASCII characters")
    return key


def _release_events(node: Node, report_id: str, version: int) -> list[dict[str, Any]]:
    """The release.decided events of one report version (names and reasons only), found
    through the ``releases`` table rather than by scanning the log."""
    from exchange.events import parse_event_unverified

    rows = node.store.reports.release_events(report_id, version)
    return [parse_event_unverified(data).attrs for data in rows]


def _deliveries(
    node: Node, report_id: str, version: int, now: datetime
) -> list[officer_pb2.PartnerDelivery]:
    """Per partner a release was decided for: not sent, queued, or delivered (receipt);
    and the warning loop: its acknowledgement, the deadline's state, replies."""
    acks: dict[str, str] = {}
    for a in received_acks(node, report_id=report_id):
        acks[a.peer] = a.ack.status  # oldest first: the newest wins
    due = {
        (d.peer, d.version): d.summary(now)
        for d in warning.deadlines(node, incoming=False, report_id=report_id)
    }
    answers: dict[str, int] = {}
    for r in warning.replies(node, in_reply_to=report_id):
        if r["direction"] == "received":
            answers[r["peer"]] = answers.get(r["peer"], 0) + 1
    states = node.store.outbox.report_states(report_id, version)
    out = []
    for event in _release_events(node, report_id, version):
        peer, seq = str(event["peer"]), int(event.get("seq") or 0)
        if not event.get("envelope_id"):
            state = "not_sent"
        else:
            state = "delivered" if states.get((peer, seq)) == "delivered" else "queued"
        out.append(
            officer_pb2.PartnerDelivery(
                peer=peer,
                state=state,
                seq=seq,
                ack_status=acks.get(peer, ""),
                due_state=due.get((peer, version), ""),
                replies=answers.get(peer, 0),
            )
        )
    return out


@dataclass
class _Loop:
    due: dict[str, Deadline]
    read: set[str]
    acked: dict[str, str]


def _inbox_loop(node: Node) -> _Loop:
    """Deadlines and read marks of the inbox (plain rows); acknowledgements are read per
    shown item (``_acked``), each from its sealed statement."""
    acked: dict[str, str] = {}
    return _Loop(
        {d.envelope_id: d for d in warning.deadlines(node, incoming=True)},
        warning.read_ids(node),
        acked,
    )


def _loop_match(item: InboxItem, loop: _Loop, state: str, now: datetime) -> bool:
    if state == "unread":
        return item.envelope_id not in loop.read
    d = loop.due.get(item.envelope_id)
    return d is not None and d.summary(now) == state.upper()


def _urgency(loop: _Loop, item: InboxItem, now: datetime) -> tuple[int, float]:
    """OVERDUE first, then DUE by deadline, then the rest newest first (stable sort)."""
    d = loop.due.get(item.envelope_id)
    if d is not None:
        rank, at = d.urgency(now)
        if rank < 2:
            return (rank, at.timestamp())
    return (2, 0.0)


def _retraction_shown(node: Node, item: InboxItem) -> dict[str, Any] | None:
    """Why and when the sender withdrew ``item``'s report, from its signed retraction,
    verified under the keys the sender held when the retraction arrived."""
    record = retraction_of(node, item.peer, item.report_id)
    if record is None or "retraction" not in record:
        return None
    held: InboxItem = record["item"]
    statement = b64_decode(record["retraction"], what="retraction")
    signature = b64_decode(record["retraction_signature"], what="retraction signature")
    chain = node.trust_store().trusted_chain(
        held.peer, parse_time(held.received_at, field="received_at")
    )
    for card in reversed(chain.cards):
        try:
            r = verify_retraction(
                statement, signature, card.identity_key, expected_issuer=held.peer
            )
        except AccordError:
            continue
        return {
            "by": r.issuer,
            "reason": r.reason,
            "retracted_at": format_time(datetime.fromtimestamp(r.retracted_at, UTC)),
            "version": r.version,
        }
    raise StoreError(
        f"the retraction of {item.report_id} does not verify under {item.peer}'s keys",
        code="store.row_tampered",
    )


def _newest_versions(items: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i.report_id] = max(out.get(i.report_id, 0), i.version)
    return out


def _fields_as_received(node: Node, item: InboxItem, content: dict[str, Any]) -> dict[str, Any]:
    """The report's fields, verified against the partner's card chain as it was trusted
    when the item arrived: an item received before the partner (or one of its keys) was
    revoked stays readable afterwards, and is still checked under the author's key."""
    if "presentation" not in content:
        return {}  # a retraction carries no fields
    arrived = parse_time(item.received_at, field="received_at")
    trust = node.trust_store()
    chain = trust.trusted_chain(item.peer, arrived)  # peer.revoked only if it was already then
    revoked = trust.revoked_keys(item.peer)
    keys = [
        c.identity_key
        for c in chain.cards
        if c.identity_key not in revoked or arrived < revoked[c.identity_key]
    ]
    for key in reversed(keys):  # the report was sealed under one of the partner's keys
        try:
            verified = verify_presentation(
                content["presentation"], key, limits=PresentationLimits()
            )
        except AccordError:
            continue
        return dict(verified.fields)
    raise StoreError(
        f"item {item.envelope_id} does not verify under any key {item.peer} held when it arrived",
        code="store.row_tampered",
        next_step="The stored item may have been edited: run 'accord audit export' and "
        "'accord audit verify'.",
    )


MAX_SCAN = 5_000  # received items one ListInbox call reads at most to fill a filtered page


def _title_and_severity(node: Node, item: InboxItem, content: dict[str, Any]) -> dict[str, Any]:
    """The two fields an officer scans a list by, verified like ``inbox show`` verifies."""
    if item.kind != "report" or not ({"title", "severity"} & set(item.fields)):
        return {}
    try:
        fields = _fields_as_received(node, item, content)
    except PeerDataError as e:
        if e.code != "peer.revoked":
            raise
        # Sealed under a key revoked from before it arrived: listed, never shown as
        # verified ('inbox show' says why).
        return {}
    return {k: fields[k] for k in ("title", "severity") if k in fields}


def _watch_event(
    node: Node, rowid: int, item: InboxItem, content: dict[str, Any]
) -> officer_pb2.InboxEvent | None:
    """One WatchInbox event; None (logged by code) for an item that does not verify."""
    try:
        shown = _title_and_severity(node, item, content)
    except AccordError as e:
        log.warning("inbox.watch_item_refused", row=rowid, code=e.code)
        return None
    status = None
    if item.kind == "ack" and "ack" in content:  # the signed statement the row seals
        status = parse_ack_unverified(b64_decode(content["ack"], what="ack")).status
    return officer_pb2.InboxEvent(
        item=inbox_message(item, _newest_versions([item]), shown),
        cursor=rowid,
        status=status if isinstance(status, str) else "",
        critical=shown.get("severity") == "critical",
    )


def _matches(
    item: InboxItem,
    shown: dict[str, Any],
    newest: dict[str, int],
    request: officer_pb2.ListInboxRequest,
    state: str,
) -> bool:
    if request.severity and shown.get("severity") != request.severity:
        return False
    if request.text and request.text.casefold() not in str(shown.get("title", "")).casefold():
        return False
    superseded = item.version < newest.get(item.report_id, item.version)
    now_state = "retracted" if item.retracted else "superseded" if superseded else "current"
    return not state or state == now_state
