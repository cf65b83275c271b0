"""The TAXII feed side by side with the OASIS reference server: ``make bench-feed``.

    .venv/bin/python bench/feed.py                  # 10,000 objects
    .venv/bin/python bench/feed.py --objects 2000   # quicker

Builds two in-process nodes, sends threat alerts from pk-moi to cn-mps until cn-mps's feed
holds about ``--objects`` STIX objects, starts ``accord feed serve`` (HTTPS, a Basic
consumer, onward rules, a ``feed.served`` event and a checkpoint per page), and pulls every
page with taxii2-client's ``as_pages``. Then it loads the very objects it pulled into
medallion (memory backend, plain HTTP, one Basic user) and pulls them the same way. Both
servers run on loopback and are stopped when the run ends. Prints one table and writes
``bench/results/feed-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.cli import run  # noqa: E402
from node.home import Node  # noqa: E402
from node.services import outbox  # noqa: E402
from node.services.feed import collection_id  # noqa: E402
from node.services.inbox import apply_batch, cursor  # noqa: E402
from tests.builders import ALERT, valid_report  # noqa: E402

PASSPHRASE = "bench passphrase for accord"  # noqa: S105  (throwaway nodes in a temp dir)
RESULTS = ROOT / "bench" / "results"
PAGE = 1000
TERMS = """
id = "pk-moi:cn-mps:bench"
suite = "hybrid"
valid_days = 30
[send]
tlp_max = "amber"
[send.schema."threat-alert@1"]
labels = ["operational", "public", "tactical"]
[send.onward]
green = ["any"]
[receive]
tlp_max = "amber"
[receive.schema."threat-alert@1"]
labels = ["public"]
"""
POLICY = """
[peer.cn-mps]
max_tlp = "amber"
[peer.cn-mps.schema."threat-alert@1"]
release_labels = ["operational", "public", "tactical"]
withhold_labels = ["sensitive-source"]
"""


def _cli(*args: object) -> Any:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = run([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"accord {' '.join(map(str, args))} failed ({code})")
    text = out.getvalue()
    return json.loads(text) if text.strip().startswith(("{", "[")) else text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build(tmp: Path, objects: int) -> tuple[Path, dict[str, str], float]:
    pk, cn = tmp / "pk-moi", tmp / "cn-mps"
    for data, name, port in ((pk, "pk-moi", _free_port()), (cn, "cn-mps", _free_port())):
        _cli(
            "--data",
            data,
            "init",
            "--node",
            name,
            "--name",
            name,
            "--endpoint",
            f"127.0.0.1:{port}",
        )
    for src, dst in ((pk, cn), (cn, pk)):
        card = tmp / f"{src.name}.card"
        _cli("--data", src, "card", "export", "--out", card, "--force")
        fp = _cli("--data", src, "card", "show", "--json")["fingerprint"]
        _cli("--data", dst, "peer", "add", card, "--fingerprint", fp)
    (tmp / "terms.toml").write_text(TERMS, "utf-8")
    (tmp / "policy.toml").write_text(POLICY, "utf-8")
    _cli(
        "--data",
        pk,
        "agreement",
        "propose",
        "--peer",
        "cn-mps",
        "--terms",
        tmp / "terms.toml",
        "--out",
        tmp / "agreement.json",
    )
    for side in (cn, pk):
        _cli("--data", side, "agreement", "sign", tmp / "agreement.json", "--yes")
    _cli("--data", pk, "policy", "apply", tmp / "policy.toml")
    issued = _cli(
        "--data",
        cn,
        "feed",
        "consumer",
        "add",
        "bench",
        "--class",
        "cert",
        "--out",
        tmp / "bench",
        "--basic",
        "--json",
    )
    # Six objects per alert: the report, two indicators, two locations, a course of action.
    reports = max(1, (objects - 3) // 6)
    a, b = Node.open(pk, lambda: PASSPHRASE), Node.open(cn, lambda: PASSPHRASE)
    started = time.perf_counter()
    try:
        done = 0
        while done < reports:
            batch = []
            for i in range(done, min(reports, done + 200)):
                report = json.loads(json.dumps(ALERT))
                report["tlp"] = "green"
                report["fields"]["title"] = f"Bench alert {i}"
                report["fields"]["indicators"] = [f"198.51.{i // 250}.{i % 250}", f"c2-{i}.example"]
                batch.append(valid_report(report))
            now = datetime.now(UTC).replace(microsecond=0)
            outbox.submit(a, batch, now)
            envelopes = outbox.pending(a, "cn-mps", cursor(b, "pk-moi"), 256)
            out = apply_batch(b, "pk-moi", envelopes, now)
            if out.stopped is not None or out.rejected:
                raise SystemExit(f"delivery failed: {out}")
            done += len(batch)
    finally:
        a.close()
        b.close()
    return cn, {"user": "bench", "password": issued["basic_secret"]}, time.perf_counter() - started


def pull(url: str, **kwargs: Any) -> tuple[list[dict[str, Any]], float, int]:
    from taxii2client.v21 import Collection, as_pages

    col = Collection(url, **kwargs)
    started = time.perf_counter()
    objects: list[dict[str, Any]] = []
    pages = 0
    for envelope in as_pages(col.get_objects, per_request=PAGE):
        objects.extend(envelope.get("objects", []))
        pages += 1
    return objects, time.perf_counter() - started, pages


def accord_feed(
    tmp: Path, cn: Path, creds: dict[str, str]
) -> tuple[list[dict[str, Any]], float, float, int]:
    ready = tmp / "feed.ready"
    env = {**os.environ, "ACCORD_PASSPHRASE": PASSPHRASE, "PYTHONPATH": str(ROOT)}
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # would replace the node CA below
        env.pop(var, None)
        os.environ.pop(var, None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "node",
            "--data",
            str(cn),
            "feed",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            str(ready),
            "--log-level",
            "warning",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("accord feed serve did not start")
            time.sleep(0.05)
        port = json.loads(ready.read_text())["feed_port"]
        url = f"https://127.0.0.1:{port}/api/collections/{collection_id('pk-moi')}/"
        ca = str(tmp / "bench" / "ca.pem")
        from taxii2client.v21 import Collection

        started = time.perf_counter()  # the first request indexes what arrived
        Collection(url, verify=ca, **creds).get_objects(limit=1)
        indexed = time.perf_counter() - started
        objects, seconds, pages = pull(url, verify=ca, **creds)
        return objects, indexed, seconds, pages
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def medallion(tmp: Path, objects: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float, int]:
    from medallion import application_instance, register_blueprints, set_config
    from werkzeug.serving import make_server

    port = _free_port()
    cid = "472c94ae-3113-4e3e-a4dd-a9f4ac7471d4"
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    data = {
        "/discovery": {
            "title": "medallion bench",
            "default": f"http://127.0.0.1:{port}/api1/",
            "api_roots": [f"http://127.0.0.1:{port}/api1/"],
        },
        "api1": {
            "information": {
                "title": "api1",
                "versions": ["application/taxii+json;version=2.1"],
                "max_content_length": 104857600,
            },
            "status": [],
            "collections": [
                {
                    "id": cid,
                    "title": "bench",
                    "can_read": True,
                    "can_write": False,
                    "media_types": ["application/stix+json;version=2.1"],
                    "objects": objects,
                    "manifest": [
                        {
                            "id": o["id"],
                            "date_added": now,
                            "version": o.get("modified", o.get("created")),
                            "media_type": "application/stix+json;version=2.1",
                        }
                        for o in objects
                    ],
                }
            ],
        },
    }
    path = tmp / "medallion.json"
    path.write_text(json.dumps(data), "utf-8")
    config = {
        "backend": {
            "module": "medallion.backends.memory_backend",
            "module_class": "MemoryBackend",
            "filename": str(path),
        },
        "users": {"bench": "bench"},
        "taxii": {"max_page_size": PAGE},
    }
    for prop in ("users", "taxii", "backend"):
        set_config(application_instance, prop, config)
    register_blueprints(application_instance)
    server = make_server("127.0.0.1", port, application_instance, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}/api1/collections/{cid}/"
        return pull(url, user="bench", password="bench")  # noqa: S106  (loopback, throwaway)
    finally:
        server.shutdown()


def _sync_of_this_run(within_s: float = 6 * 3600) -> dict[str, Any] | None:
    """The sync measured by ``bench/run.py`` just before (``make bench`` runs it first):
    the newest pipelines result written in the last hours, on SQLite, else None."""
    runs = sorted(p for p in RESULTS.glob("*.json") if not p.name.startswith("feed-"))
    if not runs or time.time() - runs[-1].stat().st_mtime > within_s:
        return None
    doc = json.loads(runs[-1].read_text("utf-8"))
    for backend in ("sqlite", "postgres"):
        live = doc.get("backends", {}).get(backend, {}).get("live")
        if isinstance(live, dict) and "envelopes_per_s" in live:
            return {
                "backend": backend,
                "backlog": int(live["backlog"]),
                "envelopes_per_s": float(live["envelopes_per_s"]),
                "file": runs[-1].name,
            }
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=10_000)
    args = parser.parse_args()
    os.environ["ACCORD_PASSPHRASE"] = PASSPHRASE
    os.environ.pop("ACCORD_HOME", None)
    with tempfile.TemporaryDirectory(prefix="accord-bench-feed-") as t:
        tmp = Path(t)
        cn, creds, setup = build(tmp, args.objects)
        ours, indexed, ours_s, ours_pages = accord_feed(tmp, cn, creds)
        theirs, theirs_s, theirs_pages = medallion(tmp, ours)
    keys = {(o["id"], o.get("modified", o.get("created"))) for o in ours}
    if len(keys) != len(ours) or len(theirs) != len(ours):
        raise SystemExit(
            f"pulled {len(ours)} from Accord ({len(keys)} distinct), {len(theirs)} from medallion"
        )
    rows = [
        ("accord feed (HTTPS, auth, onward rules, log per page)", len(ours), ours_pages, ours_s),
        ("medallion 3 memory backend (plain HTTP)", len(theirs), theirs_pages, theirs_s),
    ]
    print(
        f"setup: {setup:.1f} s to send and apply the reports; "
        f"the first request indexed them in {indexed:.1f} s"
    )
    print(f"{'server':56} {'objects':>8} {'pages':>6} {'seconds':>8} {'objects/s':>10}")
    for name, n, pages, secs in rows:
        print(f"{name:56} {n:>8} {pages:>6} {secs:>8.2f} {n / secs:>10.0f}")
    ratio = (len(ours) / ours_s) / (len(theirs) / theirs_s)
    print(f"Accord/medallion ratio (objects per second): {ratio:.1f}x")
    sync = _sync_of_this_run()
    if sync is not None:  # what a user of the reference stack gets, against our sync
        medallion_rate = len(theirs) / theirs_s
        print(
            f"sync over mTLS ({sync['backend']}, signed, encrypted, receipted, "
            f"{sync['backlog']:,} backlog): {sync['envelopes_per_s']:,.0f} envelopes/s; "
            f"a plain TAXII 2.1 pull of {len(theirs):,} objects from medallion: "
            f"{medallion_rate:,.0f} objects/s; "
            f"ratio {sync['envelopes_per_s'] / medallion_rate:.1f}x"
        )
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"feed-{stamp}.json").write_text(
        json.dumps(
            {
                "objects": len(ours),
                "page": PAGE,
                "setup_seconds": setup,
                "index_seconds": indexed,
                "accord": {"seconds": ours_s, "pages": ours_pages},
                "medallion": {"seconds": theirs_s, "pages": theirs_pages},
                "ratio": ratio,
                "sync_of_this_run": sync,
            },
            indent=2,
        ),
        "utf-8",
    )


if __name__ == "__main__":
    main()
