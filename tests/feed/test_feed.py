"""The TAXII 2.1 feed, tested with the consumers' own code: the OASIS ``taxii2-client`` (what
OpenCTI's TAXII connector and MISP's import module use) pulls from a real ``accord feed
serve`` process over real TLS on loopback, and ``stix2`` parses every object strictly.

One world for the module: pk-moi and th-nia send to cn-mps, whose feed serves them to
consumers of several classes. The onward rules (tests/feed/world.py) let threat alerts
go on at green to cert, counter-terrorism and police, at amber to cert and
counter-terrorism, at amber+strict to counter-terrorism; nothing at clear; never red.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import stix2
from taxii2client.v21 import ApiRoot, Collection, Server, as_pages

from exchange.events import parse_event_unverified
from node.cli import run
from node.home import Node
from node.services import outbox
from node.services.feed import collection_id
from node.services.stix import TLP2_IDS, stix_id
from tests.builders import MARKER, valid_report
from tests.conftest import PASSPHRASE
from tests.feed.world import POLICY, TERMS, alert, now
from tests.integration.conftest import ServerProcess

TAXII = "application/taxii+json;version=2.1"


def _cli(*args: str | Path) -> Any:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()) as err:
        code = run([str(a) for a in args])
    assert code == 0, (args, err.getvalue(), out.getvalue())
    text = out.getvalue()
    return json.loads(text) if text.strip().startswith(("{", "[")) else text


@dataclass
class Cred:
    name: str
    dir: Path
    password: str | None

    def kwargs(self, *, cert: bool = False) -> dict[str, Any]:
        if cert or self.password is None:
            return {"cert": (str(self.dir / "client.pem"), str(self.dir / "client.key"))}
        return {"user": self.name, "password": self.password}


@dataclass
class World:
    base: str
    ca: str
    pk: Node
    th: Node
    cn: Node
    cn_dir: Path
    tmp: Path
    creds: dict[str, Cred]

    def collection(self, peer: str, who: str, *, cert: bool = False) -> Collection:
        url = f"{self.base}/api/collections/{collection_id(peer)}/"
        return Collection(url, verify=self.ca, **self.creds[who].kwargs(cert=cert))

    def get(self, path: str, who: str | None, **kw: Any) -> requests.Response:
        headers = kw.pop("headers", {"Accept": TAXII})
        auth = None
        if who is not None:
            c = self.creds[who]
            auth = (c.name, c.password or "")
        return requests.get(
            self.base + path, headers=headers, auth=auth, verify=self.ca, timeout=30, **kw
        )

    def send(self, node: Node, reports: list[dict[str, Any]]) -> list[str]:
        t = now()
        results = outbox.submit(node, [valid_report(r) for r in reports], t)
        deliver_from(node, self.cn, t)
        return [r.report_id for r in results]


def deliver_from(sender: Node, cn: Node, t: Any) -> None:
    from node.services.inbox import apply_batch, cursor

    peer = sender.config.node
    envelopes = outbox.pending(sender, "cn-mps", cursor(cn, peer), 256)
    out = apply_batch(cn, peer, envelopes, t)
    assert out.stopped is None and not out.rejected, out


def _node(tmp: Path, name: str, port: int) -> Path:
    data = tmp / name
    _cli(
        "--data",
        data,
        "init",
        "--node",
        name,
        "--name",
        f"Agency {name}",
        "--endpoint",
        f"127.0.0.1:{port}",
    )
    return data


def _trust(tmp: Path, a: Path, b: Path) -> None:
    for src, dst in ((a, b), (b, a)):
        card = tmp / f"{src.name}.card"
        _cli("--data", src, "card", "export", "--out", card, "--force")
        shown = _cli("--data", src, "card", "show", "--json")
        _cli("--data", dst, "peer", "add", card, "--fingerprint", shown["fingerprint"])


def _agree(tmp: Path, sender: Path, cn: Path) -> None:
    terms, file = tmp / f"{sender.name}.terms.toml", tmp / f"{sender.name}.agreement.json"
    terms.write_text(TERMS, "utf-8")
    _cli(
        "--data",
        sender,
        "agreement",
        "propose",
        "--peer",
        "cn-mps",
        "--terms",
        terms,
        "--out",
        file,
    )
    for side in (cn, sender):
        _cli("--data", side, "agreement", "sign", file, "--yes")
    policy = tmp / f"{sender.name}.policy.toml"
    policy.write_text(POLICY, "utf-8")
    _cli("--data", sender, "policy", "apply", policy)


CONSUMERS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    # name: (class, extra options, basic)
    "ctd": ("counter-terrorism", (), True),
    "ctd-own": ("counter-terrorism", ("--own-organisation",), False),
    "police": ("police", (), True),
    "army": ("military", (), True),
    "pk-only": ("counter-terrorism", ("--collections", "pk-moi"), True),
    "leaver": ("cert", (), True),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("feed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACCORD_PASSPHRASE", PASSPHRASE)
        mp.delenv("ACCORD_HOME", raising=False)
        # requests lets these override a session's own CA file (requests#3829); the feed's
        # consumers trust exactly the node's CA.
        mp.delenv("REQUESTS_CA_BUNDLE", raising=False)
        mp.delenv("CURL_CA_BUNDLE", raising=False)
        pk, cn, th = (
            _node(tmp, "pk-moi", 7441),
            _node(tmp, "cn-mps", 7442),
            _node(tmp, "th-nia", 7443),
        )
        _trust(tmp, pk, cn)
        _trust(tmp, th, cn)
        _agree(tmp, pk, cn)
        _agree(tmp, th, cn)
        creds = {}
        for name, (cls, extra, basic) in CONSUMERS.items():
            out = tmp / "consumers" / name
            args: list[str | Path] = [
                "--data",
                cn,
                "feed",
                "consumer",
                "add",
                name,
                "--class",
                cls,
                *extra,
                "--out",
                out,
                "--json",
            ]
            if basic:
                args.append("--basic")
            issued = _cli(*args)
            assert (out / "client.key").stat().st_mode & 0o777 == 0o600
            if basic:
                assert (out / "basic.txt").stat().st_mode & 0o777 == 0o600
                assert (out / "basic.txt").read_text().strip() == f"{name}:{issued['basic_secret']}"
            creds[name] = Cred(name, out, issued["basic_secret"])
        server = ServerProcess(
            cn,
            tmp / "feed.ready",
            tmp / "feed.log",
            args=("feed", "serve", "--listen", "127.0.0.1:0"),
        ).start()
        try:
            port = server.wait_ready()["feed_port"]
            nodes = [Node.open(d, lambda: PASSPHRASE) for d in (pk, th, cn)]
            try:
                yield World(
                    base=f"https://127.0.0.1:{port}",
                    ca=str(tmp / "consumers" / "ctd" / "ca.pem"),
                    pk=nodes[0],
                    th=nodes[1],
                    cn=nodes[2],
                    cn_dir=cn,
                    tmp=tmp,
                    creds=creds,
                )
            finally:
                for n in nodes:
                    n.close()
        finally:
            assert server.terminate() == 0, server.logs()


def _pull(col: Collection, per_request: int = 50, **filters: Any) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for envelope in as_pages(col.get_objects, per_request=per_request, **filters):
        objects.extend(envelope.get("objects", []))
    return objects


def _report_id(origin: str, report_id: str) -> str:
    return stix_id("report", origin, report_id, "report")


# ---- F03: pagination -------------------------------------------------------------------------


@pytest.mark.threat("F03")
def test_every_page_of_many_objects_sharing_one_date_added(world: World) -> None:
    ids = world.send(world.pk, [alert("green", title=f"Alert {i}") for i in range(60)])
    col = world.collection("pk-moi", "ctd")
    objects = _pull(col, per_request=25)
    keys = [(o["id"], o.get("modified", o.get("created"))) for o in objects]
    assert len(keys) == len(set(keys)), "an object came twice"
    got = {o["id"] for o in objects}
    assert {_report_id("pk-moi", r) for r in ids} <= got
    for obj in objects:  # every object parses strictly as STIX 2.1
        stix2.parse(obj, allow_custom=False)
    manifest = col.get_manifest(limit=1000)["objects"]
    dates = {m["date_added"] for m in manifest}
    assert len(manifest) > 3 * 25 and len(dates) <= 3, "the pages crossed one date_added"
    # The headers name the first and last date_added of each page.
    r = world.get(f"/api/collections/{collection_id('pk-moi')}/objects/?limit=5", "ctd")
    assert r.status_code == 200 and r.headers["content-type"].startswith(TAXII)
    assert r.headers["X-TAXII-Date-Added-First"] <= r.headers["X-TAXII-Date-Added-Last"]


@pytest.mark.threat("F03")
def test_items_arriving_during_paging_come_exactly_once(world: World) -> None:
    col = world.collection("pk-moi", "ctd")
    start = col.get_manifest(limit=1000)
    mark = max(m["date_added"] for m in start["objects"]) if start.get("objects") else None
    before = world.send(world.pk, [alert("green", title=f"Early {i}") for i in range(10)])
    page = col.get_objects(limit=7, added_after=mark) if mark else col.get_objects(limit=7)
    seen = list(page["objects"])
    assert page["more"]
    during = world.send(world.pk, [alert("green", title=f"Late {i}") for i in range(10)])
    while page.get("more"):
        kwargs = {"added_after": mark} if mark else {}
        page = col.get_objects(limit=7, next=page["next"], **kwargs)
        seen.extend(page.get("objects", []))
    keys = [(o["id"], o.get("modified", o.get("created"))) for o in seen]
    assert len(keys) == len(set(keys))
    ids = {o["id"] for o in seen}
    assert {_report_id("pk-moi", r) for r in before + during} <= ids


@pytest.mark.threat("F03")
def test_added_after_is_exclusive(world: World) -> None:
    world.send(world.pk, [alert("green", title="Before the mark")])
    col = world.collection("pk-moi", "ctd")
    manifest = col.get_manifest(limit=1000)["objects"]
    mark = max(m["date_added"] for m in manifest)
    assert not col.get_objects(added_after=mark).get("objects")
    [rid] = world.send(world.pk, [alert("green", title="After the mark")])
    after = col.get_objects(added_after=mark)["objects"]
    assert _report_id("pk-moi", rid) in {o["id"] for o in after}
    assert all(m["date_added"] > mark for m in col.get_manifest(added_after=mark)["objects"])


@pytest.mark.threat("F03")
def test_a_forged_or_foreign_next_is_refused(world: World) -> None:
    world.send(world.pk, [alert("green", title=f"Page {i}") for i in range(3)])
    path = f"/api/collections/{collection_id('pk-moi')}/objects/"
    page = world.get(path + "?limit=2", "ctd").json()
    token = page["next"]
    assert world.get(path, "ctd", params={"limit": 2, "next": token}).status_code == 200
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    date_added, row, tag = raw.split("|")
    forged = base64.urlsafe_b64encode(f"{date_added}|{int(row) - 1}|{tag}".encode()).decode()
    for bad in (forged.rstrip("="), token[:-2] + "AA", "not-a-cursor"):
        r = world.get(path, "ctd", params={"limit": 2, "next": bad})
        assert r.status_code == 400, r.text
        assert r.json()["http_status"] == "400" and r.json()["title"] == "Bad next"
    # A cursor is only good for the consumer and listing it was issued for.
    assert world.get(path, "police", params={"limit": 2, "next": token}).status_code == 400
    other = f"/api/collections/{collection_id('pk-moi')}/manifest/"
    assert world.get(other, "ctd", params={"limit": 2, "next": token}).status_code == 400


@pytest.mark.threat("F03")
def test_an_amendment_and_a_retraction_are_versions_and_revocation(world: World) -> None:
    t = now()
    [rid] = world.send(world.pk, [alert("green", title="To be amended")])
    outbox.amend(world.pk, rid, valid_report(alert("green", title="Amended")), t)
    outbox.retract(world.pk, rid, "erroneous", t + timedelta(seconds=1))
    deliver_from(world.pk, world.cn, t + timedelta(seconds=1))
    col = world.collection("pk-moi", "ctd")
    oid = _report_id("pk-moi", rid)
    versions = col.object_versions(oid)["versions"]
    assert len(versions) == 3 and versions == sorted(versions)
    every = col.get_object(oid, version="all")["objects"]
    assert [o["name"] for o in every] == ["To be amended", "Amended", "Amended"]
    assert [o.get("revoked", False) for o in every] == [False, False, True]
    [last] = col.get_object(oid)["objects"]
    assert last["revoked"] is True and last["modified"] == versions[-1]
    [first] = col.get_object(oid, version="first")["objects"]
    assert first["modified"] == versions[0]
    assert stix2.parse(last, allow_custom=False).revoked


# ---- F01: credentials ------------------------------------------------------------------------


@pytest.mark.threat("F01")
def test_no_or_wrong_credentials_are_refused(world: World) -> None:
    path = f"/api/collections/{collection_id('pk-moi')}/objects/"
    for r in (
        world.get(path, None),
        world.get("/taxii2/", None),
        requests.get(
            world.base + path,
            headers={"Accept": TAXII},
            auth=("ctd", "wrong"),
            verify=world.ca,
            timeout=30,
        ),
        requests.get(
            world.base + path,
            headers={"Accept": TAXII},
            auth=("nobody", "x"),
            verify=world.ca,
            timeout=30,
        ),
    ):
        assert r.status_code == 401
        assert r.headers["content-type"].startswith(TAXII)
        assert r.json()["http_status"] == "401" and "objects" not in r.json()
        assert "Basic" in r.headers["www-authenticate"]


@pytest.mark.threat("F01")
def test_a_certificate_of_another_ca_fails_the_handshake(world: World) -> None:
    # pk-moi's own node certificate: a valid certificate, of pk-moi's CA, not cn-mps's.
    cert, key = world.pk.keyring().tls_server_material()
    (world.tmp / "foreign.pem").write_bytes(cert + key)
    # TLS 1.3: the server checks the client certificate after the client's handshake ends,
    # so the refusal arrives as an alert or a closed connection, before any HTTP answer.
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        requests.get(
            world.base + "/taxii2/",
            headers={"Accept": TAXII},
            verify=world.ca,
            cert=str(world.tmp / "foreign.pem"),
            timeout=30,
        )


@pytest.mark.threat("F01")
def test_a_client_certificate_alone_authenticates(world: World) -> None:
    server = Server(world.base + "/taxii2/", verify=world.ca, **world.creds["ctd-own"].kwargs())
    [root] = server.api_roots
    assert isinstance(root, ApiRoot)
    assert {c.id for c in root.collections} == {collection_id("pk-moi"), collection_id("th-nia")}


@pytest.mark.threat("F01")
def test_a_revoked_consumer_is_refused_from_the_next_request(world: World) -> None:
    world.send(world.pk, [alert("green", title="For the leaver")])
    col = world.collection("pk-moi", "leaver")
    assert col.get_objects(limit=1)["objects"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACCORD_PASSPHRASE", PASSPHRASE)
        _cli("--data", world.cn_dir, "feed", "consumer", "revoke", "leaver")
        listed = _cli("--data", world.cn_dir, "feed", "consumer", "list", "--json")
    assert [c["revoked_at"] is not None for c in listed if c["name"] == "leaver"] == [True]
    for kwargs in (world.creds["leaver"].kwargs(), world.creds["leaver"].kwargs(cert=True)):
        r = requests.get(
            world.base + f"/api/collections/{collection_id('pk-moi')}/objects/",
            headers={"Accept": TAXII},
            auth=(kwargs["user"], kwargs["password"]) if "user" in kwargs else None,
            cert=kwargs.get("cert"),
            verify=world.ca,
            timeout=30,
        )
        assert r.status_code == 401


# ---- F02: onward rules, RED, AMBER+STRICT, partners -----------------------------------------


def _ids(world: World, peer: str, who: str) -> set[str]:
    return {o["id"] for o in _pull(world.collection(peer, who), per_request=500)}


@pytest.mark.threat("F02")
def test_each_class_sees_what_the_onward_rules_allow(world: World) -> None:
    green, amber, clear = world.send(
        world.pk,
        [
            alert("green", title="Green"),
            alert("amber", title="Amber"),
            alert("clear", title="Clear"),
        ],
    )
    g, a, c = (_report_id("pk-moi", r) for r in (green, amber, clear))
    ctd, police, army = (_ids(world, "pk-moi", w) for w in ("ctd", "police", "army"))
    assert g in ctd and a in ctd and c not in ctd  # clear is not listed: nobody
    assert g in police and a not in police
    assert not army  # outside the rules: nothing at all, not even the identity
    # What may not be served answers exactly like what does not exist.
    col = f"/api/collections/{collection_id('pk-moi')}/objects/"
    missing = world.get(col + stix_id("report", "pk-moi", "nothing", "report") + "/", "police")
    hidden = world.get(col + a + "/", "police")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json() and hidden.headers.keys() == missing.headers.keys()
    assert world.get(col + a + "/versions/", "police").json() == missing.json()


@pytest.mark.threat("F02")
def test_red_is_never_served(world: World) -> None:
    [red] = world.send(world.pk, [alert("red", title="Red")])
    oid = _report_id("pk-moi", red)
    for who in ("ctd", "ctd-own", "police"):
        objects = _pull(world.collection("pk-moi", who), per_request=500)
        assert oid not in {o["id"] for o in objects}
        text = json.dumps(objects)
        assert TLP2_IDS["red"] not in text and '"Red"' not in text
        assert world.get(
            f"/api/collections/{collection_id('pk-moi')}/objects/{oid}/", who
        ).status_code in (404, 401)


@pytest.mark.threat("F02")
def test_amber_strict_only_to_the_own_organisation(world: World) -> None:
    [strict] = world.send(world.pk, [alert("amber+strict", title="Strict")])
    oid = _report_id("pk-moi", strict)
    assert oid not in _ids(world, "pk-moi", "ctd")
    own = world.collection("pk-moi", "ctd-own", cert=True)
    [obj] = own.get_object(oid)["objects"]
    assert obj["object_marking_refs"] == [TLP2_IDS["amber+strict"]]


@pytest.mark.threat("F02")
def test_a_partners_report_never_appears_in_another_partners_collection(world: World) -> None:
    [from_th] = world.send(world.th, [alert("green", title="From Thailand")])
    [from_pk] = world.send(world.pk, [alert("green", title="From Pakistan")])
    th_obj, pk_obj = _report_id("th-nia", from_th), _report_id("pk-moi", from_pk)
    in_pk, in_th = _ids(world, "pk-moi", "ctd"), _ids(world, "th-nia", "ctd")
    assert pk_obj in in_pk and th_obj not in in_pk
    assert th_obj in in_th and pk_obj not in in_th
    assert not any(i.startswith("report--") and i in in_pk for i in in_th)
    # Asking for th-nia's object in pk-moi's collection is a plain 404.
    path = f"/api/collections/{collection_id('pk-moi')}/objects/{th_obj}/"
    assert world.get(path, "ctd").status_code == 404
    # A consumer limited to pk-moi does not see th-nia's collection at all.
    listed = world.get("/api/collections/", "pk-only").json()["collections"]
    assert [c["id"] for c in listed] == [collection_id("pk-moi")]
    r = world.get(f"/api/collections/{collection_id('th-nia')}/objects/", "pk-only")
    assert r.status_code == 404


def test_other_accept_values_get_406_and_the_discovery_is_taxii(world: World) -> None:
    for accept in ("application/json", "application/taxii+json;version=2.0", "*/*"):
        r = world.get("/taxii2/", "ctd", headers={"Accept": accept})
        assert r.status_code == 406 and r.json()["http_status"] == "406"
    doc = world.get("/taxii2/", "ctd").json()
    assert doc["api_roots"] == [world.base + "/api/"]
    root = world.get("/api/", "ctd").json()
    assert root["versions"] == [TAXII]
    assert world.get("/api/nothing/", "ctd").status_code == 404
    assert (
        requests.post(
            world.base + "/api/collections/",
            auth=("ctd", world.creds["ctd"].password or ""),
            headers={"Accept": TAXII},
            verify=world.ca,
            timeout=30,
        ).status_code
        == 405
    )


def test_misp_imports_a_collection_as_its_taxii21_module_does(world: World) -> None:
    """misp-modules' TAXII 2.1 import: as_pages(spec_version="2.1", per_request=100), one
    bundle, misp-stix's external parser, one event's attributes and objects."""
    from misp_stix_converter import ExternalSTIX2toMISPParser

    world.send(world.pk, [alert("green", title="For MISP", indicators=["198.51.100.9"])])
    col = world.collection("pk-moi", "ctd")
    objects = [
        o
        for page in as_pages(col.get_objects, per_request=100, spec_version="2.1")
        for o in page.get("objects", [])
    ]
    bundle = stix2.v21.Bundle(objects, allow_custom=True)
    parser = ExternalSTIX2toMISPParser()
    parser.load_stix_bundle(bundle)
    parser.parse_stix_bundle(single_event=True)
    values = {a.value for a in parser.misp_event.attributes} | {
        a.value for o in parser.misp_event.objects for a in o.attributes
    }
    assert "198.51.100.9" in values
    # OpenCTI's connector finds a collection by API root path and title: "api.pk-moi".
    [root] = Server(
        world.base + "/taxii2/", verify=world.ca, **world.creds["ctd"].kwargs()
    ).api_roots
    assert root.url.split("/")[-2] == "api"
    assert {c.title for c in root.collections} == {"pk-moi", "th-nia"}


# ---- F04: every page served is logged --------------------------------------------------------


@pytest.mark.threat("F04")
def test_every_page_served_is_logged_without_values(world: World) -> None:
    world.send(world.pk, [alert("green", title=f"Logged {i}") for i in range(4)])
    pages = list(as_pages(world.collection("pk-moi", "police").get_objects, per_request=3))
    served = {
        f"{o['id']}@{o.get('modified', o.get('created'))}" for p in pages for o in p["objects"]
    }
    events = [parse_event_unverified(e) for _i, e in world.cn.log.leaves(0, 1_000_000)]
    logged = [e for e in events if e.kind == "feed.served" and e.attrs["consumer"] == "police"]
    assert len(logged) >= len(pages)
    assert served <= {x for e in logged for x in e.attrs["objects"]}
    assert all(e.attrs["collection"] == "pk-moi" for e in logged)
    added = [e for e in events if e.kind == "feed.consumer_added"]
    assert {e.attrs["consumer"] for e in added} == set(CONSUMERS)
    for e in events:
        if e.kind.startswith("feed."):
            assert MARKER not in e.data.decode() and "Logged" not in e.data.decode()
    assert os.path.exists(world.cn_dir / "node.db")


@pytest.mark.threat("F04")
def test_audit_disclosures_lists_partner_releases_and_feed_pages(world: World) -> None:
    world.send(world.pk, [alert("green", title="Disclosed onward")])
    _pull(world.collection("pk-moi", "police"), per_request=500)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACCORD_PASSPHRASE", PASSPHRASE)
        for name, data in (("cn", world.cn_dir), ("pk", world.tmp / "pk-moi")):
            _cli(
                "--data", data, "audit", "export", "--out", world.tmp / f"{name}.bundle", "--force"
            )
    cards: list[str | Path] = []
    for node in ("cn-mps", "pk-moi", "th-nia"):  # the anchors an auditor checked out of band
        cards += ["--card", world.tmp / f"{node}.card"]
    served = _cli(
        "audit", "disclosures", world.tmp / "cn.bundle", *cards, "--label", "operational", "--json"
    )
    to_police = [d for d in served if d["recipient"] == "police"]
    assert to_police and all(d["recipient_kind"] == "consumer" for d in to_police)
    assert all(set(d["labels"].values()) == {"operational"} for d in to_police)
    assert all("onward rules for police" in b for d in to_police for b in d["legal_basis"].values())
    released = _cli("audit", "disclosures", world.tmp / "pk.bundle", *cards, "--json")
    assert {d["recipient"] for d in released} == {"cn-mps"}
    assert all(d["policy_digest"].startswith("sha256:") for d in released)
    assert {"title", "severity"} <= set(released[0]["fields"])
    later = _cli(
        "audit",
        "disclosures",
        world.tmp / "pk.bundle",
        *cards,
        "--since",
        "2999-01-01T00:00:00Z",
        "--json",
    )
    assert later == []
    table = _cli("audit", "disclosures", world.tmp / "cn.bundle", *cards, "--label", "operational")
    assert "police (consumer)" in table
