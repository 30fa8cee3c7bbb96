#!/usr/bin/env python3
"""Helpers for scripts/bench.sh: talk to a dev-mode toolgate over loopback (stdlib only).

  tg.py port                                   print a free loopback TCP port
  tg.py wait URL PATH SECONDS                  poll GET URL+PATH until it answers 200
  tg.py register URL TOOL_ID RESOURCE [SERVER_ID]
                                               POST /v1/mcp/tools, expect 201
  tg.py stub SUB                               print a dev stub subject token for SUB
  tg.py exchange-body SUB AUDIENCE OUT         write an exchange request body (JSON) to OUT
  tg.py exchange URL SUB AUDIENCE              exchange a stub; print the access token
  tg.py verify-body TOKEN TOOL_ID OUT          write a verify request body (JSON) to OUT
  tg.py verify URL TOKEN TOOL_ID STATUS [CHECK]  one verify; fail unless STATUS (and CHECK)
  tg.py mint URL AUDIENCE N OUT [THREADS]      exchange N stubs with distinct `sub`s, write the
                                               tokens one per line to OUT
  tg.py exchange-expect URL SUB NAMESPACE AUDIENCE STATUS ERROR
                                               one exchange of a stub for SUB in NAMESPACE; fail
                                               unless it answers STATUS with `error` ERROR
  tg.py startup-wait URL PATH SECONDS READY    write a line to READY (a FIFO) once running, then
                                               poll GET URL+PATH every 10 ms until it answers 200;
                                               print that moment (epoch seconds, as bash's
                                               $EPOCHREALTIME). Start it before the server so
                                               that Python's own start-up is not measured.
  tg.py quiesce SECONDS URL...                 wait until every toolgate's audit queue is empty
                                               (GET /v1/stats: audit.queue_depth == 0), so that
                                               no writer drains one run's records into the next
  tg.py metric URL NAME                        print the value of metric NAME in GET URL/metrics
  tg.py request URL METHOD PATH STATUS [BEARER [BODY_FILE]]
                                               one request (BEARER "" for none; BODY_FILE sent as
                                               application/json); fail unless it answers STATUS
  tg.py db-count DB TABLE                      print the number of rows of TABLE in DB (read-only)
  tg.py revoke-bulk DB N NAMESPACE             insert N subject revocations (format uri,
                                               wimse://dev.local/ns/NAMESPACE/sa/revoked-<i>) into
                                               DB's `revocations` table in one transaction
  tg.py sql-scan DB                            time the start-up SELECT of src/store/revocations.rs
                                               (SELECT_LIVE_KEYS) over DB; print "MS ROWS MS_IN_C"
"""

import base64
import concurrent.futures
import http.client
import json
import socket
import sqlite3
import sys
import threading
import time
import urllib.parse

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"


def die(msg):
    print(f"tg.py: {msg}", file=sys.stderr)
    sys.exit(1)


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def stub(sub, namespace=None):
    header = b64(b'{"alg":"none","typ":"JWT"}')
    claims = {"sub": sub}
    if namespace is not None:
        claims["namespace"] = namespace
    claims = b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{header}.{claims}.stub"


def exchange_body(sub, audience, namespace=None):
    return {
        "grant_type": GRANT,
        "subject_token": stub(sub, namespace),
        "subject_token_type": JWT,
        "audience": audience,
    }


def verify_body(token, tool_id):
    return {"token": token, "tool_id": tool_id}


def connect(url):
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or u.hostname not in ("127.0.0.1", "localhost", "::1"):
        die(f"loopback http URLs only: {url}")
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30)


def call(conn, method, path, body=None):
    headers = {}
    data = None
    if body is not None:
        data = json.dumps(body, separators=(",", ":")).encode()
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    raw = resp.read()
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    return resp.status, parsed


def once(url, method, path, body=None):
    conn = connect(url)
    try:
        return call(conn, method, path, body)
    finally:
        conn.close()


def write_json(path, obj):
    with open(path, "w", encoding="ascii") as f:
        f.write(json.dumps(obj, separators=(",", ":")))


def cmd_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def cmd_wait(url, path, seconds):
    deadline = time.monotonic() + float(seconds)
    last = None
    while time.monotonic() < deadline:
        try:
            status, body = once(url, "GET", path)
            if status == 200:
                return
            last = f"HTTP {status}: {body}"
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    die(f"{url}{path} not up after {seconds}s ({last})")


def cmd_register(url, tool_id, resource, server_id=None):
    tool = {"tool_id": tool_id, "resource_uri": resource}
    if server_id is not None:
        tool["server_id"] = server_id
    status, body = once(url, "POST", "/v1/mcp/tools", tool)
    if status != 201:
        die(f"register {tool_id}: HTTP {status}: {body}")


def cmd_exchange(url, sub, audience):
    status, body = once(url, "POST", "/v1/exchange/token", exchange_body(sub, audience))
    if status != 200 or not isinstance(body, dict) or "access_token" not in body:
        die(f"exchange for {sub}: HTTP {status}: {body}")
    print(body["access_token"])


def cmd_verify(url, token, tool_id, want_status, want_check=None):
    status, body = once(url, "POST", "/v1/mcp/verify", verify_body(token, tool_id))
    if status != int(want_status):
        die(f"verify {tool_id}: HTTP {status} (want {want_status}): {body}")
    if want_check is not None:
        check = body.get("check") if isinstance(body, dict) else None
        if check != want_check:
            die(f"verify {tool_id}: check {check!r} (want {want_check!r}): {body}")
    if status == 200 and not (isinstance(body, dict) and body.get("verified") is True):
        die(f"verify {tool_id}: 200 without verified=true: {body}")


def cmd_mint(url, audience, n, out, threads=16):
    n, threads = int(n), int(threads)
    local = threading.local()
    stamp = int(time.time())

    def one(i):
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = connect(url)
        sub = f"bench-{stamp}-{i:06d}"
        try:
            status, body = call(conn, "POST", "/v1/exchange/token", exchange_body(sub, audience))
        except (OSError, http.client.HTTPException):
            # The server may close an idle keep-alive connection; reconnect once.
            conn.close()
            conn = local.conn = connect(url)
            status, body = call(conn, "POST", "/v1/exchange/token", exchange_body(sub, audience))
        if status != 200 or not isinstance(body, dict) or "access_token" not in body:
            raise RuntimeError(f"exchange for {sub}: HTTP {status}: {body}")
        return body["access_token"]

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        try:
            tokens = list(pool.map(one, range(n), chunksize=64))
        except RuntimeError as e:
            die(str(e))
    elapsed = time.monotonic() - t0
    if len(set(tokens)) != n:
        die(f"minted {len(set(tokens))} distinct tokens, wanted {n}")
    with open(out, "w", encoding="ascii") as f:
        for t in tokens:
            f.write(t + "\n")
    print(f"minted {n} distinct tokens in {elapsed:.1f}s ({n / elapsed:.0f}/s, {threads} threads)", file=sys.stderr)


def cmd_exchange_expect(url, sub, namespace, audience, want_status, want_error):
    status, body = once(url, "POST", "/v1/exchange/token", exchange_body(sub, audience, namespace))
    error = body.get("error") if isinstance(body, dict) else None
    if status != int(want_status) or error != want_error:
        die(f"exchange for {sub} in {namespace}: HTTP {status} error {error!r} "
            f"(want {want_status} {want_error!r}): {body}")


def cmd_startup_wait(url, path, seconds, ready):
    """The server binds its port before it loads its state, so a connection may be accepted
    and then answered only once start-up is done; either way the first 200 marks "up"."""
    with open(ready, "w", encoding="ascii") as f:
        f.write("ready\n")
    deadline = time.monotonic() + float(seconds)
    last = None
    while time.monotonic() < deadline:
        try:
            status, body = once(url, "GET", path)
            if status == 200:
                print(f"{time.time():.6f}")
                return
            last = f"HTTP {status}: {body}"
        except OSError as e:
            last = str(e)
        time.sleep(0.01)
    die(f"{url}{path} not up after {seconds}s ({last})")


def cmd_quiesce(seconds, *urls):
    t0 = time.monotonic()
    deadline = t0 + float(seconds)
    for url in urls:
        while True:
            status, body = once(url, "GET", "/v1/stats")
            if status != 200 or not isinstance(body, dict):
                die(f"{url}/v1/stats: HTTP {status}: {body}")
            depth = (body.get("audit") or {}).get("queue_depth")
            if depth is None:
                return  # a build without an audit queue: nothing to wait for
            if depth == 0:
                break
            if time.monotonic() > deadline:
                die(f"{url}: audit queue still holds {depth} records after {seconds}s")
            time.sleep(0.05)
    waited = time.monotonic() - t0
    if waited >= 0.1:
        print(f"waited {waited:.1f}s for audit queues to drain", file=sys.stderr)


def cmd_metric(url, name):
    conn = connect(url)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
    finally:
        conn.close()
    if resp.status != 200:
        die(f"{url}/metrics: HTTP {resp.status}: {text[:200]}")
    for line in text.splitlines():
        parts = line.split()
        # No labels on the metrics read here: "NAME VALUE".
        if len(parts) == 2 and parts[0] == name:
            value = float(parts[1])
            print(int(value) if value.is_integer() else value)
            return
    die(f"{url}/metrics has no unlabelled metric {name}")


def cmd_request(url, method, path, want_status, bearer="", body_file=None):
    headers = {}
    data = None
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    if body_file:
        with open(body_file, "rb") as f:
            data = f.read()
        headers["Content-Type"] = "application/json"
    conn = connect(url)
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    if resp.status != int(want_status):
        die(f"{method} {url}{path}: HTTP {resp.status} (want {want_status}): "
            f"{raw[:300].decode('utf-8', 'replace')}")


# The row every bulk revocation gets; columns not named here take their schema defaults.
INSERT_REVOCATION = (
    "INSERT INTO revocations (format, issuer, value, reason, revoked_at, expires_at) "
    "VALUES ('uri', '', ?, 'bench', ?, NULL)"
)
# Keep in step with SELECT_LIVE_KEYS in src/store/revocations.rs.
SELECT_LIVE_KEYS = (
    "SELECT format, issuer, value, expires_at FROM revocations "
    "WHERE expires_at IS NULL OR expires_at > ?1"
)


def cmd_revoke_bulk(db, n, namespace):
    n = int(n)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        if conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'revocations'").fetchone()[0] != 1:
            die(f"{db} has no revocations table (start toolgate on it once first)")
        # A throw-away database: no fsync, and a cache that holds the whole UNIQUE index.
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -524288")
        now = int(time.time())
        prefix = f"wimse://dev.local/ns/{namespace}/sa/revoked-"
        t0 = time.monotonic()
        conn.execute("BEGIN")
        conn.executemany(INSERT_REVOCATION, ((f"{prefix}{i}", now) for i in range(n)))
        conn.execute("COMMIT")
        elapsed = time.monotonic() - t0
        got = conn.execute("SELECT count(*) FROM revocations WHERE reason = 'bench'").fetchone()[0]
        if got != n:
            die(f"inserted {got} revocations, wanted {n}")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    print(f"inserted {n} revocations in {elapsed:.1f}s", file=sys.stderr)


def cmd_db_count(db, table):
    if not table.replace("_", "").isalnum():
        die(f"db-count: bad table name {table!r}")
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        print(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def cmd_sql_scan(db):
    """Two timings of the start-up SELECT: rows handed to Python one by one (an upper bound:
    Python builds a tuple and three strings per row), and the same rows consumed inside SQLite
    by an aggregate that reads every selected column (close to the database's own share)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        now = int(time.time())
        t0 = time.monotonic()
        rows = 0
        for _ in conn.execute(SELECT_LIVE_KEYS, (now,)):
            rows += 1
        py_ms = (time.monotonic() - t0) * 1000
        t0 = time.monotonic()
        (agg_rows, _) = conn.execute(
            "SELECT count(*), sum(length(format) + length(issuer) + length(value) "
            f"+ coalesce(expires_at, 0)) FROM ({SELECT_LIVE_KEYS})", (now,)
        ).fetchone()
        c_ms = (time.monotonic() - t0) * 1000
    finally:
        conn.close()
    if agg_rows != rows:
        die(f"sql-scan: {rows} rows iterated, {agg_rows} aggregated")
    print(f"{py_ms:.0f} {rows} {c_ms:.0f}")


def main(argv):
    if not argv:
        die(__doc__)
    cmd, args = argv[0], argv[1:]
    table = {
        "port": (cmd_port, 0, 0),
        "wait": (cmd_wait, 3, 3),
        "register": (cmd_register, 3, 4),
        "stub": (lambda sub: print(stub(sub)), 1, 1),
        "exchange-body": (lambda sub, aud, out: write_json(out, exchange_body(sub, aud)), 3, 3),
        "exchange": (cmd_exchange, 3, 3),
        "verify-body": (lambda tok, tool, out: write_json(out, verify_body(tok, tool)), 3, 3),
        "verify": (cmd_verify, 4, 5),
        "mint": (cmd_mint, 4, 5),
        "exchange-expect": (cmd_exchange_expect, 6, 6),
        "startup-wait": (cmd_startup_wait, 4, 4),
        "quiesce": (cmd_quiesce, 2, 9),
        "metric": (cmd_metric, 2, 2),
        "request": (cmd_request, 4, 6),
        "revoke-bulk": (cmd_revoke_bulk, 3, 3),
        "sql-scan": (cmd_sql_scan, 1, 1),
        "db-count": (cmd_db_count, 2, 2),
    }
    if cmd not in table:
        die(f"unknown command {cmd!r}\n{__doc__}")
    fn, lo, hi = table[cmd]
    if not lo <= len(args) <= hi:
        die(f"{cmd}: wrong number of arguments\n{__doc__}")
    fn(*args)


if __name__ == "__main__":
    main(sys.argv[1:])
