#!/usr/bin/env python3
"""Helpers for scripts/bench.sh: talk to a dev-mode toolgate over loopback (stdlib only).

  tg.py port                                   print a free loopback TCP port
  tg.py wait URL PATH SECONDS                  poll GET URL+PATH until it answers 200
  tg.py register URL TOOL_ID RESOURCE          POST /v1/mcp/tools, expect 201
  tg.py stub SUB                               print a dev stub subject token for SUB
  tg.py exchange-body SUB AUDIENCE OUT         write an exchange request body (JSON) to OUT
  tg.py exchange URL SUB AUDIENCE              exchange a stub; print the access token
  tg.py verify-body TOKEN TOOL_ID OUT          write a verify request body (JSON) to OUT
  tg.py verify URL TOKEN TOOL_ID STATUS [CHECK]  one verify; fail unless STATUS (and CHECK)
  tg.py mint URL AUDIENCE N OUT [THREADS]      exchange N stubs with distinct `sub`s, write the
                                               tokens one per line to OUT
"""

import base64
import concurrent.futures
import http.client
import json
import socket
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


def stub(sub):
    header = b64(b'{"alg":"none","typ":"JWT"}')
    claims = b64(json.dumps({"sub": sub}, separators=(",", ":")).encode())
    return f"{header}.{claims}.stub"


def exchange_body(sub, audience):
    return {
        "grant_type": GRANT,
        "subject_token": stub(sub),
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


def cmd_register(url, tool_id, resource):
    status, body = once(url, "POST", "/v1/mcp/tools", {"tool_id": tool_id, "resource_uri": resource})
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


def main(argv):
    if not argv:
        die(__doc__)
    cmd, args = argv[0], argv[1:]
    table = {
        "port": (cmd_port, 0, 0),
        "wait": (cmd_wait, 3, 3),
        "register": (cmd_register, 3, 3),
        "stub": (lambda sub: print(stub(sub)), 1, 1),
        "exchange-body": (lambda sub, aud, out: write_json(out, exchange_body(sub, aud)), 3, 3),
        "exchange": (cmd_exchange, 3, 3),
        "verify-body": (lambda tok, tool, out: write_json(out, verify_body(tok, tool)), 3, 3),
        "verify": (cmd_verify, 4, 5),
        "mint": (cmd_mint, 4, 5),
    }
    if cmd not in table:
        die(f"unknown command {cmd!r}\n{__doc__}")
    fn, lo, hi = table[cmd]
    if not lo <= len(args) <= hi:
        die(f"{cmd}: wrong number of arguments\n{__doc__}")
    fn(*args)


if __name__ == "__main__":
    main(sys.argv[1:])
