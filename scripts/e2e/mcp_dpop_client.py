"""A DPoP-bound token (RFC 9449) end to end with the official MCP SDK client: an httpx.Auth adds
`Authorization: DPoP <token>` and a fresh proof to every request the SDK sends.

usage: mcp_dpop_client.py GATEWAY_MCP_URL TOOLGATE_URL SUBJECT_TOKEN AUDIENCE TOOL MODE

The proofs are made here from the `cryptography` package's EC P-256 key (ES256, the raw r||s
signature, base64url): header typ dpop+jwt and the public jwk; claims jti (random), htm (the
request's method), htu (its URL without query and fragment), iat (now), ath (base64url SHA-256
of the token) when a token goes with it, and the server's nonce once it named one (RFC 9449 §8:
a 400 or 401 use_dpop_nonce with a DPoP-Nonce header is retried once with it).

The token: SUBJECT_TOKEN exchanged at toolgate's token endpoint (from its RFC 8414 metadata)
for AUDIENCE, with a proof from the same key; it must come back as token_type DPoP with cnf.jkt
the key's RFC 7638 thumbprint. Then:
  MODE dpop      initialize and tools/call TOOL with a proof per request          -> OK
  MODE bearer    the same token as `Authorization: Bearer`, no proof (a thief's)  -> refused
  MODE otherkey  the same token with fresh proofs from another key (a thief's)    -> refused
Prints what mcp_client.py prints ("OK <text>" exit 0, or "REFUSED <status> ..." exit 3/4), then
how many proofs were made."""
import asyncio
import base64
import hashlib
import json
import secrets
import sys
import time
import urllib.parse

try:  # the SDK's HTTP client: httpx2 from mcp 2.x on, httpx before
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

import mcp_client

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: dict) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


class DpopKey:
    """An EC P-256 key that signs DPoP proofs (ES256)."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        numbers = self.private.public_key().public_numbers()
        self.jwk = {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big")),
        }

    def thumbprint(self) -> str:
        """RFC 7638: SHA-256 of the required members, sorted, no whitespace."""
        required = {k: self.jwk[k] for k in ("crv", "kty", "x", "y")}
        canonical = json.dumps(required, separators=(",", ":"), sort_keys=True).encode()
        return b64url(hashlib.sha256(canonical).digest())

    def proof(self, method: str, url: str, token: str | None = None, nonce: str | None = None) -> str:
        parts = urllib.parse.urlsplit(url)
        claims = {
            "jti": b64url(secrets.token_bytes(16)),
            "htm": method,
            "htu": urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
            "iat": int(time.time()),
        }
        if token is not None:
            claims["ath"] = b64url(hashlib.sha256(token.encode("ascii")).digest())
        if nonce is not None:
            claims["nonce"] = nonce
        header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk}
        signing_input = f"{b64url_json(header)}.{b64url_json(claims)}".encode()
        r, s = decode_dss_signature(self.private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return f"{signing_input.decode()}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def asks_for_nonce(response: httpx.Response) -> bool:
    """RFC 9449 §8 (token endpoint: 400 and a JSON error) and §9 (resource: 401 and the DPoP
    challenge), both with a DPoP-Nonce header."""
    if "dpop-nonce" not in response.headers:
        return False
    if response.status_code == 401:
        return 'error="use_dpop_nonce"' in response.headers.get("www-authenticate", "")
    return response.status_code == 400


class DpopAuth(httpx.Auth):
    """`Authorization: DPoP <token>` and a fresh proof for every request, with the nonce the
    server last named; a use_dpop_nonce answer is retried once with the new nonce."""

    def __init__(self, token: str, key: DpopKey) -> None:
        self.token, self.key = token, key
        self.nonce: str | None = None
        self.proofs = 0

    def sign(self, request: httpx.Request) -> None:
        request.headers["Authorization"] = f"DPoP {self.token}"
        request.headers["DPoP"] = self.key.proof(request.method, str(request.url), self.token, self.nonce)
        self.proofs += 1

    def auth_flow(self, request: httpx.Request):
        self.sign(request)
        response = yield request
        retry = asks_for_nonce(response)
        self.nonce = response.headers.get("dpop-nonce", self.nonce)
        if retry:
            self.sign(request)
            response = yield request
            self.nonce = response.headers.get("dpop-nonce", self.nonce)


def exchange(toolgate: str, subject: str, audience: str, key: DpopKey) -> str:
    with httpx.Client(timeout=20) as client:
        meta = client.get(f"{toolgate}/.well-known/oauth-authorization-server").json()
        endpoint = meta["token_endpoint"]
        form = {"grant_type": GRANT, "subject_token": subject, "subject_token_type": JWT, "audience": audience}
        nonce = None
        for _ in range(2):
            resp = client.post(endpoint, data=form, headers={"DPoP": key.proof("POST", endpoint, nonce=nonce)})
            if not asks_for_nonce(resp) or nonce is not None:
                break
            nonce = resp.headers["dpop-nonce"]
    if resp.status_code != 200:
        print(f"EXCHANGE FAILED {resp.status_code} {resp.text}")
        sys.exit(2)
    body = resp.json()
    claims = json.loads(base64.urlsafe_b64decode(body["access_token"].split(".")[1] + "=="))
    if body.get("token_type") != "DPoP" or claims.get("cnf", {}).get("jkt") != key.thumbprint():
        print(f"EXCHANGE FAILED: token_type {body.get('token_type')}, cnf {claims.get('cnf')}: not bound to the key")
        sys.exit(2)
    print(f"exchanged for a DPoP-bound token (cnf.jkt = the key's thumbprint{', after use_dpop_nonce' if nonce else ''})")
    return body["access_token"]


async def run(gateway: str, toolgate: str, subject: str, audience: str, tool: str, mode: str) -> int:
    key = DpopKey()
    token = exchange(toolgate, subject, audience, key)
    if mode == "bearer":
        return await mcp_client.main(gateway, token, tool)
    auth = DpopAuth(token, key if mode == "dpop" else DpopKey())
    code = await mcp_client.main(gateway, None, tool, auth=auth)
    print(f"({auth.proofs} proofs made, one per request)")
    return code


if __name__ == "__main__":
    if len(sys.argv) != 7 or sys.argv[6] not in ("dpop", "bearer", "otherkey"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(run(*sys.argv[1:7])))
