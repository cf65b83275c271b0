"""The read-only TAXII 2.1 feed (docs/adr/0014): what partners sent, as STIX (services/stix.py),
for the node's domestic agencies (MISP, OpenCTI), under the originator's onward rules.

- **Collections**: one per partner; a collection serves objects of that partner's inbox
  items only.
- **Consumers** (``accord feed consumer add``) each have a client certificate from the
  node's CA and optionally an HTTP Basic secret (stored as an Argon2id hash), a recipient
  class and the partners they may read. A request without valid credentials, or from a
  revoked consumer, is refused (401) before anything else is read.
- **Visibility**: an object is served only when the agreement in force with its partner
  lets the consumer's class have it (``onward`` rules of the partner -> node direction),
  never at TLP:RED, and at TLP:AMBER+STRICT only to a consumer marked as the node's own
  organisation. What may not be served answers exactly as what does not exist.
- **Order**: the feed indexes inbox items (through node/services/inbox.py) into ``feed_objects``,
  giving each a ``date_added`` that never goes back; pages are keyset reads on
  (date_added, row id). ``next`` is that position, authenticated with an HMAC bound to the
  consumer, collection and filters, so a forged or replayed cursor is refused (400).
- **Log**: every page served is a ``feed.served`` event (consumer, collection, object ids
  and versions; never a value).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import argon2
import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from exchange.agreement import ONWARD_TLPS, RECIPIENT_CLASSES, onward_rules
from exchange.errors import AccordError, ConfigError, InputError
from exchange.names import NODE_ID_RE
from keys.keyfile import write_private_file
from keys.tls import certificate_fingerprint
from node import clock
from node.home import Node
from node.services.agreements import current_agreement
from node.services.inbox import inbox_after
from node.services.schemas import registry
from node.services.stix import (
    STIX_NAMESPACE,
    report_objects,
    shared_objects,
    stix_source,
    stix_time,
)
from node.store import feed_repo
from node.store.feed import Consumer, FeedRow, Visibility

log = structlog.get_logger("accord.feed")

TAXII_MEDIA = "application/taxii+json;version=2.1"
STIX_MEDIA = "application/stix+json;version=2.1"
_ACCEPTED = {"application/taxii+json;version=2.1", "application/taxii+json"}
API_ROOT = "/api/"
DEFAULT_PAGE = 100
MAX_PAGE = 1000
INDEX_BATCH = 100
LOG_CHUNK = 200  # objects per feed.served event (an event is at most 64 KiB)
CURSOR_KEY_META = "feed.cursor_key"
CONSUMER_CLASSES = tuple(c for c in RECIPIENT_CLASSES if c != "any")
_HASHER = argon2.PasswordHasher()  # Argon2id, the library's RFC 9106 low-memory defaults


def collection_id(peer: str) -> str:
    return str(uuid.uuid5(STIX_NAMESPACE, f"taxii-collection {peer}"))


def _aad(peer: str, stix_id: str, version: str) -> bytes:
    return f"accord/v1/feed-at-rest\n{peer}\n{stix_id}\n{version}".encode("ascii")


# -- consumers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedConsumer:
    consumer: Consumer
    basic_secret: str | None  # shown once, never stored


def add_consumer(
    node: Node,
    name: str,
    *,
    recipient_class: str,
    collections: Sequence[str],
    own_organisation: bool,
    out: Path,
    basic: bool,
    now: datetime,
) -> IssuedConsumer:
    """Issue a consumer's credentials into ``out`` and record it (``feed.consumer_added``)."""
    if NODE_ID_RE.fullmatch(name) is None:
        raise InputError(
            "consumer name must be 3-32 characters of a-z, 0-9 and '-'",
            next_step="Use a short name such as ctd-misp.",
        )
    if recipient_class not in CONSUMER_CLASSES:
        raise InputError(
            f"--class must be one of {', '.join(CONSUMER_CLASSES)}",
            next_step="The class is what the agreement's onward rules name.",
        )
    peers = feed_repo(node.store).peers_with_items()
    unknown = [c for c in collections if c not in peers]
    if unknown:
        raise InputError(
            f"--collections: {unknown[0]} is not a partner of this node",
            next_step="List partners with 'accord peer list'.",
        )
    feed = feed_repo(node.store)
    if feed.consumer(name) is not None:
        raise InputError(f"a consumer {name} exists", next_step="Choose another name.")
    if basic and (out / "basic.txt").exists():
        raise InputError(f"{out / 'basic.txt'} exists", next_step="Choose another --out.")
    fingerprint = node.keyring().issue_feed_credentials(name, out, now)
    secret = secrets.token_urlsafe(32) if basic else None
    if secret is not None:
        write_private_file(out / "basic.txt", f"{name}:{secret}\n".encode("ascii"), replace=False)
    consumer = Consumer(
        name=name,
        recipient_class=recipient_class,
        collections=tuple(sorted(set(collections))),
        own_organisation=own_organisation,
        cert_fingerprint=fingerprint,
        basic_hash=None if secret is None else _HASHER.hash(secret),
        created_at=stix_time(now),
        revoked_at=None,
    )
    with node.store.transaction() as db:
        feed.add_consumer(db, consumer)
        node.record(
            db,
            "feed.consumer_added",
            now,
            consumer=name,
            recipient_class=recipient_class,
            collections=list(consumer.collections),
            own_organisation=own_organisation,
            cert_fingerprint=fingerprint,
            basic=secret is not None,
        )
    node.checkpoint(now)
    return IssuedConsumer(consumer, secret)


def revoke_consumer(node: Node, name: str, now: datetime) -> Consumer:
    """Refuse ``name`` from its next request on (``feed.consumer_revoked``)."""
    feed = feed_repo(node.store)
    consumer = feed.consumer(name)
    if consumer is None:
        raise InputError(f"no feed consumer {name}", next_step="See 'accord feed consumer list'.")
    if consumer.revoked_at is not None:
        return consumer
    with node.store.transaction() as db:
        feed.revoke_consumer(db, name, stix_time(now))
        node.record(db, "feed.consumer_revoked", now, consumer=name)
    node.checkpoint(now)
    revoked = feed.consumer(name)
    assert revoked is not None
    return revoked


def list_consumers(node: Node) -> list[Consumer]:
    return feed_repo(node.store).consumers()


# -- indexing what arrived ---------------------------------------------------------------------


def index_inbox(node: Node, now: datetime, precise: datetime | None = None) -> int:
    """Add the STIX objects of inbox items not yet indexed, partner by partner, in the
    order they arrived; returns how many objects were added. ``date_added`` never goes
    back, even if the clock does. TLP:RED items are never indexed. ``precise``: the time
    with milliseconds, for ``date_added``."""
    feed = feed_repo(node.store)
    cipher = node.keyring().storage_cipher()
    added = 0
    for peer in feed.peers_with_items():
        last = feed.indexed_seq(peer)
        while True:
            items = inbox_after(node, peer, last, INDEX_BATCH)
            if not items:
                break
            with node.store.transaction() as db:
                # One date_added per batch, later than every earlier one (by at least a
                # millisecond): an added_after of any date_added seen is then exact.
                latest = feed.last_date_added()
                when = now if precise is None else precise
                if latest is not None:
                    floor = datetime.fromisoformat(latest.replace("Z", "+00:00"))
                    when = max(when, floor + timedelta(milliseconds=1))
                date_added = stix_time(when)
                for item in items:
                    if item.kind == "report" and item.tlp == "red":
                        continue
                    try:
                        src = stix_source(node, item.envelope_id, now, as_received=True)
                    except AccordError as e:
                        log.warning("feed.index_skipped", peer=peer, seq=item.seq, code=e.code)
                        continue
                    if src.tlp == "red":
                        continue
                    shared = shared_objects(src)
                    for obj in [*shared, *report_objects(src)]:
                        version = str(obj.get("modified", obj["created"]))
                        if feed.has_object(peer, obj["id"], version):
                            continue
                        is_shared = obj in shared
                        level = src.tlp if obj["type"] == "marking-definition" else ""
                        feed.add_object(
                            db,
                            peer=peer,
                            stix_id=obj["id"],
                            type=obj["type"],
                            version=version,
                            date_added=date_added,
                            tlp=level if is_shared else src.tlp,
                            sop="" if is_shared else src.sop,
                            envelope_id=item.envelope_id,
                            fields=() if is_shared else [*src.fields, *src.derived],
                            blob=cipher.encrypt(
                                json.dumps(obj, sort_keys=True).encode("utf-8"),
                                _aad(peer, obj["id"], version),
                            ),
                        )
                        added += 1
                last = items[-1].seq
                feed.set_indexed_seq(db, peer, last)
    return added


# -- who may see what --------------------------------------------------------------------------


def visibility(node: Node, consumer: Consumer, peer: str, now: datetime) -> Visibility:
    """The (TLP, SOP) pairs of ``peer``'s collection that ``consumer`` may read: the onward
    rules of the agreement in force, never RED, AMBER+STRICT only to the own organisation."""
    if consumer.collections and peer not in consumer.collections:
        return Visibility(frozenset())
    agreement = current_agreement(node, peer, now)
    if agreement is None:
        return Visibility(frozenset())
    rules = onward_rules(agreement, peer, node.config.node)
    pairs = {
        (tlp, sop)
        for tlp in ONWARD_TLPS
        for sop in registry().names()
        if rules.allows(tlp, sop, consumer.recipient_class)
        and (tlp != "amber+strict" or consumer.own_organisation)
    }
    return Visibility(frozenset(pairs), agreement.digest)


# -- the HTTP side -----------------------------------------------------------------------------


class TaxiiError(Exception):
    def __init__(self, status: int, title: str, description: str = "") -> None:
        super().__init__(title)
        self.status, self.title, self.description = status, title, description


def _taxii(
    body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=True),
        status_code=status,
        media_type=TAXII_MEDIA,
        headers=dict(headers or {}),
    )


def _error(e: TaxiiError) -> Response:
    headers = {"WWW-Authenticate": 'Basic realm="accord-feed"'} if e.status == 401 else {}
    body: dict[str, Any] = {"title": e.title, "http_status": str(e.status)}
    if e.description:
        body["description"] = e.description
    return _taxii(body, e.status, headers)


NOT_FOUND = TaxiiError(404, "Not found", "No such resource, or it is not shared with you.")


def _timestamp(value: str, what: str) -> str:
    """An RFC 3339 UTC timestamp as the feed writes it (milliseconds, ``Z``)."""
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", value):
        raise TaxiiError(400, f"Bad {what}", f"{what} must be an RFC 3339 UTC timestamp")
    try:
        t = datetime.fromisoformat(value[:23].rstrip("Z").rstrip(".") + "+00:00")
    except ValueError:
        raise TaxiiError(400, f"Bad {what}", f"{what} is not a valid time") from None
    return stix_time(t)


def _list(params: Mapping[str, str], key: str) -> list[str]:
    raw = params.get(key)
    return [] if raw is None else [v.strip() for v in raw.split(",") if v.strip()]


@dataclass(frozen=True)
class _Query:
    limit: int
    added_after: str | None
    ids: tuple[str, ...]
    types: tuple[str, ...]
    versions: tuple[str, ...]
    spec_ok: bool
    after: tuple[str, int] | None


class CursorCodec:
    """``next``: base64url of ``date_added|row id|tag``, the tag an HMAC-SHA256 (truncated to
    128 bits) over the position and what the page was asked for (consumer, collection,
    endpoint, filters), so a cursor is only good for the listing it came from."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _tag(self, binding: str, date_added: str, row: int) -> str:
        mac = hmac.new(self._key, f"{binding}\n{date_added}\n{row}".encode(), hashlib.sha256)
        return mac.hexdigest()[:32]

    def encode(self, binding: str, date_added: str, row: int) -> str:
        raw = f"{date_added}|{row}|{self._tag(binding, date_added, row)}"
        return base64.urlsafe_b64encode(raw.encode("ascii")).decode("ascii").rstrip("=")

    def decode(self, binding: str, token: str) -> tuple[str, int]:
        bad = TaxiiError(400, "Bad next", "the next cursor is not one this feed issued here")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
            date_added, row_text, tag = raw.split("|")
            row = int(row_text)
        except (ValueError, UnicodeDecodeError):
            raise bad from None
        if not hmac.compare_digest(tag, self._tag(binding, date_added, row)):
            raise bad
        return date_added, row


def cursor_key(node: Node) -> bytes:
    """The feed's cursor key, made once per node and kept in ``meta``: cursors stay good
    across restarts. It authenticates positions only; access is checked on every request."""
    held = node.store.get_meta(CURSOR_KEY_META)
    if held is None:
        with node.store.transaction() as db:
            held = node.store.get_meta(CURSOR_KEY_META)
            if held is None:
                held = secrets.token_hex(32)
                node.store.set_meta(db, CURSOR_KEY_META, held)
    return bytes.fromhex(held)


class Feed:
    """The TAXII endpoints over one open node (one connection, used from the event loop's
    thread only)."""

    def __init__(self, node: Node, now: Callable[[], datetime]) -> None:
        self.node = node
        self.now = now
        self.store = feed_repo(node.store)
        self.cursors = CursorCodec(cursor_key(node))
        self.peer_certs: dict[tuple[str, int], bytes] = {}
        self._verified: dict[tuple[str, str], str] = {}  # (name, secret digest) -> hash
        self._agreement_digest: dict[str, str | None] = {}  # per partner, of the last page

    # -- credentials ------------------------------------------------------------------------
    def authenticate(self, request: Request) -> Consumer:
        client = request.scope.get("client")
        der = None if client is None else self.peer_certs.get((client[0], client[1]))
        consumer: Consumer | None = None
        if der is not None:
            consumer = self.store.consumer_by_certificate(certificate_fingerprint(der))
        else:
            consumer = self._basic(request.headers.get("authorization", ""))
        if consumer is None or consumer.revoked_at is not None:
            raise TaxiiError(401, "Unauthorized", "credentials missing, unknown or revoked")
        return consumer

    def _basic(self, header: str) -> Consumer | None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            return None
        try:
            name, _, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        consumer = self.store.consumer(name)
        if consumer is None or consumer.basic_hash is None or not secret:
            return None
        key = (name, hashlib.sha256(secret.encode()).hexdigest())
        if self._verified.get(key) == consumer.basic_hash:  # Argon2 once per secret and hash
            return consumer
        try:
            _HASHER.verify(consumer.basic_hash, secret)
        except argon2.exceptions.VerificationError:
            return None
        self._verified[key] = consumer.basic_hash
        return consumer

    # -- helpers ----------------------------------------------------------------------------
    def _peer(self, consumer: Consumer, cid: str) -> str:
        for peer in self._collections(consumer):
            if collection_id(peer) == cid:
                return peer
        raise NOT_FOUND

    def _collections(self, consumer: Consumer) -> list[str]:
        peers = self.store.peers_with_items()
        return [p for p in peers if not consumer.collections or p in consumer.collections]

    def _collection(self, peer: str) -> dict[str, Any]:
        return {
            "id": collection_id(peer),
            # The partner id alone: OpenCTI's connector names collections "root.title".
            "title": peer,
            "description": f"What partner {peer} shared with {self.node.config.node}, as "
            "STIX 2.1, within the agreement's onward rules for your class.",
            "can_read": True,
            "can_write": False,
            "media_types": [STIX_MEDIA],
        }

    def _query(self, request: Request, binding: str, *, default_version: str) -> _Query:
        params = request.query_params
        try:
            limit = int(params.get("limit", DEFAULT_PAGE))
        except ValueError:
            raise TaxiiError(400, "Bad limit", "limit must be a positive integer") from None
        if limit < 1:
            raise TaxiiError(400, "Bad limit", "limit must be a positive integer")
        added = params.get("added_after")
        versions = _list(params, "match[version]") or [default_version]
        for v in versions:
            if v not in ("last", "first", "all"):
                _timestamp(v, "match[version]")
        token = params.get("next")
        return _Query(
            limit=min(limit, MAX_PAGE),
            added_after=None if added is None else _timestamp(added, "added_after"),
            ids=tuple(_list(params, "match[id]")),
            types=tuple(_list(params, "match[type]")),
            versions=tuple(
                v if v in ("last", "first", "all") else _timestamp(v, "match[version]")
                for v in versions
            ),
            spec_ok="2.1" in (_list(params, "match[spec_version]") or ["2.1"]),
            after=None if not token else self.cursors.decode(binding, token),
        )

    @staticmethod
    def _binding(consumer: Consumer, peer: str, endpoint: str, request: Request) -> str:
        params = sorted(
            (k, v) for k, v in request.query_params.multi_items() if k not in ("next", "limit")
        )
        return json.dumps([consumer.name, peer, endpoint, params])

    def _rows(self, consumer: Consumer, peer: str, q: _Query, ids: Sequence[str]) -> list[FeedRow]:
        if not q.spec_ok:
            return []
        seen = visibility(self.node, consumer, peer, self.now())
        self._agreement_digest[peer] = seen.agreement_digest
        if not seen.pairs:
            return []
        return self.store.page(
            peer,
            seen,
            after=q.after,
            added_after=q.added_after,
            ids=ids,
            types=q.types,
            versions=q.versions,
            limit=q.limit + 1,
        )

    def _object(self, row: FeedRow) -> dict[str, Any]:
        plain = (
            self.node.keyring()
            .storage_cipher()
            .decrypt(row.blob, _aad(row.peer, row.stix_id, row.version))
        )
        obj: dict[str, Any] = json.loads(plain)
        return obj

    def _served(
        self, consumer: Consumer, peer: str, endpoint: str, rows: Sequence[FeedRow]
    ) -> None:
        """``feed.served``: who, which collection, each object as ``id@version``, and per
        envelope whose objects were served its SOP and disclosed field names (names only),
        with the agreement whose onward rules allowed it."""
        now = self.now()
        # A log event holds at most 64 KiB: a large page is logged as several events (one
        # per LOG_CHUNK objects, ``part`` n of m), all in the page's one transaction.
        chunks = [rows[i : i + LOG_CHUNK] for i in range(0, len(rows), LOG_CHUNK)] or [[]]
        with self.node.store.transaction() as db:
            for n, chunk in enumerate(chunks, 1):
                items = {r.envelope_id: r for r in chunk if r.sop}
                self.node.record(
                    db,
                    "feed.served",
                    now,
                    consumer=consumer.name,
                    recipient_class=consumer.recipient_class,
                    collection=peer,
                    endpoint=endpoint,
                    part=f"{n}/{len(chunks)}",
                    objects=[f"{r.stix_id}@{r.version}" for r in chunk],
                    envelopes={e: r.sop for e, r in sorted(items.items())},
                    fields={e: ",".join(r.fields) for e, r in sorted(items.items())},
                    agreement_digest=self._agreement_digest.get(peer),
                )
        self.node.checkpoint(now)

    def _page(
        self,
        request: Request,
        consumer: Consumer,
        peer: str,
        endpoint: str,
        ids: Sequence[str],
        *,
        default_version: str = "last",
    ) -> tuple[list[FeedRow], dict[str, Any], dict[str, str]]:
        binding = self._binding(consumer, peer, endpoint, request)
        q = self._query(request, binding, default_version=default_version)
        index_inbox(self.node, self.now(), clock.precise())
        rows = self._rows(consumer, peer, q, ids)
        more = len(rows) > q.limit
        rows = rows[: q.limit]
        body: dict[str, Any] = {"more": more}
        if more:
            body["next"] = self.cursors.encode(binding, rows[-1].date_added, rows[-1].id)
        headers = {}
        if rows:
            headers = {
                "X-TAXII-Date-Added-First": rows[0].date_added,
                "X-TAXII-Date-Added-Last": rows[-1].date_added,
            }
        return rows, body, headers

    # -- endpoints --------------------------------------------------------------------------
    async def discovery(self, request: Request, consumer: Consumer) -> Response:
        root = str(request.base_url).rstrip("/") + API_ROOT
        return _taxii(
            {
                "title": f"Accord feed of {self.node.config.node}",
                "description": "What partners shared, for domestic agencies, read-only.",
                "default": root,
                "api_roots": [root],
            }
        )

    async def api_root(self, request: Request, consumer: Consumer) -> Response:
        return _taxii(
            {
                "title": f"Accord {self.node.config.node}",
                "versions": [TAXII_MEDIA],
                "max_content_length": 0,
            }
        )

    async def collections(self, request: Request, consumer: Consumer) -> Response:
        return _taxii({"collections": [self._collection(p) for p in self._collections(consumer)]})

    async def collection(self, request: Request, consumer: Consumer) -> Response:
        peer = self._peer(consumer, request.path_params["cid"])
        return _taxii(self._collection(peer))

    async def objects(self, request: Request, consumer: Consumer) -> Response:
        peer = self._peer(consumer, request.path_params["cid"])
        rows, body, headers = self._page(
            request, consumer, peer, "objects", _list(request.query_params, "match[id]")
        )
        body["objects"] = [self._object(r) for r in rows]
        self._served(consumer, peer, "objects", rows)
        return _taxii(body, headers=headers)

    async def object(self, request: Request, consumer: Consumer) -> Response:
        peer = self._peer(consumer, request.path_params["cid"])
        rows, body, headers = self._page(
            request, consumer, peer, "object", [request.path_params["oid"]]
        )
        if not rows and not body["more"]:
            raise NOT_FOUND
        body["objects"] = [self._object(r) for r in rows]
        self._served(consumer, peer, "object", rows)
        return _taxii(body, headers=headers)

    async def versions(self, request: Request, consumer: Consumer) -> Response:
        peer = self._peer(consumer, request.path_params["cid"])
        rows, body, headers = self._page(
            request,
            consumer,
            peer,
            "versions",
            [request.path_params["oid"]],
            default_version="all",
        )
        if not rows and not body["more"]:
            raise NOT_FOUND
        body["versions"] = [r.version for r in rows]
        self._served(consumer, peer, "versions", rows)
        return _taxii(body, headers=headers)

    async def manifest(self, request: Request, consumer: Consumer) -> Response:
        peer = self._peer(consumer, request.path_params["cid"])
        rows, body, headers = self._page(
            request, consumer, peer, "manifest", _list(request.query_params, "match[id]")
        )
        body["objects"] = [
            {
                "id": r.stix_id,
                "date_added": r.date_added,
                "version": r.version,
                "media_type": STIX_MEDIA,
            }
            for r in rows
        ]
        self._served(consumer, peer, "manifest", rows)
        return _taxii(body, headers=headers)


Handler = Callable[[Request, Consumer], Awaitable[Response]]


def feed_app(feed: Feed) -> Starlette:
    """The Starlette app: credentials first (401), then the Accept header (406), then the
    endpoint; every error is a TAXII error message."""

    def guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                consumer = feed.authenticate(request)
                accept = request.headers.get("accept", "").replace(" ", "").lower()
                if accept not in _ACCEPTED:
                    raise TaxiiError(406, "Not acceptable", f"Accept must be {TAXII_MEDIA}")
                return await handler(request, consumer)
            except TaxiiError as e:
                return _error(e)
            except AccordError as e:
                log.error("feed.error", code=e.code)
                return _error(TaxiiError(500, "Internal error", e.code))

        return endpoint

    async def fallback(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        title = {404: "Not found", 405: "Method not allowed"}.get(status, "Error")
        return _error(TaxiiError(status, title))

    c = "/api/collections/{cid}/"
    routes = [
        Route("/taxii2/", guarded(feed.discovery)),
        Route(API_ROOT, guarded(feed.api_root)),
        Route("/api/collections/", guarded(feed.collections)),
        Route(c, guarded(feed.collection)),
        Route(c + "objects/", guarded(feed.objects)),
        Route(c + "objects/{oid}/", guarded(feed.object)),
        Route(c + "objects/{oid}/versions/", guarded(feed.versions)),
        Route(c + "manifest/", guarded(feed.manifest)),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={404: fallback, 405: fallback, 500: fallback},
    )


class _PeerCertProtocol(H11Protocol):
    """uvicorn's h11 protocol, noting each connection's verified client certificate (DER)
    by client address, for the app to recognise the consumer. The TLS layer has already
    checked it chains to the node's CA."""

    feed: Feed

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = None if ssl_object is None else ssl_object.getpeercert(binary_form=True)
        if self.client is not None:
            if der:
                self.feed.peer_certs[(self.client[0], self.client[1])] = der
            else:
                self.feed.peer_certs.pop((self.client[0], self.client[1]), None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client is not None:
            self.feed.peer_certs.pop((self.client[0], self.client[1]), None)
        super().connection_lost(exc)


def feed_server(node: Node, listen: str, now: Callable[[], datetime]) -> uvicorn.Server:
    """A uvicorn server for the feed on ``listen`` (HOST:PORT), HTTPS only."""
    host, _, port = listen.rpartition(":")
    feed = Feed(node, now)
    context = node.keyring().feed_tls_context()
    protocol = type("FeedProtocol", (_PeerCertProtocol,), {"feed": feed})
    config = uvicorn.Config(
        feed_app(feed),
        host=host.strip("[]"),
        port=int(port),
        http=protocol,
        lifespan="off",
        access_log=False,
        log_config=None,
        ssl_context_factory=lambda _config, _default: context,
        timeout_graceful_shutdown=2,
    )
    return uvicorn.Server(config)


def serve_feed(
    node: Node, listen: str, now: Callable[[], datetime], ready_file: Path | None = None
) -> None:
    """Run the feed in the foreground until SIGTERM/SIGINT; write ``ready_file`` (JSON with
    the bound port) once listening."""
    server = feed_server(node, listen, now)
    # Our own handlers: uvicorn's re-raise the signal after shutdown (exit -15, not 0).
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]

    def stop() -> None:
        server.should_exit = True

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                await task
                raise ConfigError(f"the feed could not listen on {listen}")
            await asyncio.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        log.info("feed.listening", listen=listen, port=port)
        if ready_file is not None:  # whole or not at all: a script may be polling for it
            tmp = ready_file.with_name(ready_file.name + ".tmp")
            tmp.write_text(json.dumps({"feed_port": port, "pid": os.getpid()}), "utf-8")
            os.replace(tmp, ready_file)
        await task

    asyncio.run(main())
