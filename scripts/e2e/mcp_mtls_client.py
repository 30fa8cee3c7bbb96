"""A certificate-bound token (RFC 8705) end to end, with the official MCP SDK client on an httpx
client that presents an X.509-SVID over TLS.

usage: mcp_mtls_client.py GATEWAY_MCP_URL TOOLGATE_URL CA CERT KEY AUDIENCE TOOL MODE

The token is exchanged over mutual TLS with the SVID itself as the credential (subject_token_type
urn:starfly:token-type:mtls): toolgate binds it to the certificate (cnf.x5t#S256). Then:
  MODE bound   the call goes through the TLS gateway with the same certificate  -> OK
  MODE bearer  the same token, sent without a client certificate (a thief's replay) -> refused
Prints what mcp_client.py prints ("OK <text>" exit 0, or "REFUSED <status> ..." exit 3/4)."""
import asyncio
import json
import ssl
import sys

try:  # the SDK's HTTP client: httpx2 from mcp 2.x on, httpx before
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx

import mcp_client

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
MTLS = "urn:starfly:token-type:mtls"


def context(ca: str, cert: str | None, key: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def exchange(toolgate: str, ctx: ssl.SSLContext, audience: str) -> str:
    body = {"grant_type": GRANT, "subject_token_type": MTLS, "audience": audience}
    with httpx.Client(verify=ctx, timeout=20) as client:
        resp = client.post(f"{toolgate}/v1/exchange/token", json=body)
    if resp.status_code != 200:
        print(f"EXCHANGE FAILED {resp.status_code} {resp.text}")
        sys.exit(2)
    token = resp.json()["access_token"]
    claims = json.loads(_b64(token.split(".")[1]))
    if "x5t#S256" not in claims.get("cnf", {}):
        print("EXCHANGE FAILED: the token is not bound to the certificate")
        sys.exit(2)
    return token


def _b64(s: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


async def run(gateway: str, toolgate: str, ca: str, cert: str, key: str, audience: str, tool: str, mode: str) -> int:
    with_cert = context(ca, cert, key)
    token = exchange(toolgate, with_cert, audience)
    call_ctx = with_cert if mode == "bound" else context(ca, None, None)
    http = httpx.AsyncClient(
        verify=call_ctx,
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(30, read=300),
    )
    return await mcp_client.main(gateway, token, tool, http=http)


if __name__ == "__main__":
    if len(sys.argv) != 9 or sys.argv[8] not in ("bound", "bearer"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(run(*sys.argv[1:9])))
