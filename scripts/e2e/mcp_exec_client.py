"""Call a tool bound to each execution (requires_execution) through the gateway with the official
MCP SDK client. Every HTTP request the SDK sends gets its own token from an httpx.Auth flow; for
a tools/call it hashes the exact body (the whole JSON-RPC message) and exchanges the agent's stub
for a token whose execution_scope names that hash, the method and the URL (the session's other
messages get a plain token for the tool's resource: an execution-bound token is for its one
call only).

usage: mcp_exec_client.py GATEWAY_MCP_URL TOOLGATE_URL SUBJECT_TOKEN AUDIENCE [tamper]
With "tamper", the tools/call body is changed after its token was minted (a trailing space):
the gateway must refuse it with check "execution".
Prints what mcp_client.py prints: "OK <text>" (exit 0) or "REFUSED <status> <check> …" (exit 3
or 4), then how many tokens were minted."""
import asyncio
import base64
import hashlib
import json
import sys

try:  # the SDK's HTTP client: httpx2 from mcp 2.x on, httpx before
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx

import mcp_client

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"


class ExecutionBound(httpx.Auth):
    """An execution-bound token per request, minted by yielding the exchange request first."""

    requires_request_body = True
    requires_response_body = True  # the exchange's answer is read by the client, sync or async

    def __init__(self, toolgate: str, subject_token: str, audience: str, tamper: bool):
        self.toolgate, self.subject_token, self.audience = toolgate, subject_token, audience
        self.tamper = tamper
        self.exchanges = 0

    def auth_flow(self, request: httpx.Request):
        body = request.content
        try:
            method = json.loads(body).get("method", "") if body else ""
        except ValueError:
            method = ""
        exchange = {
            "grant_type": GRANT, "subject_token": self.subject_token, "subject_token_type": JWT,
            "audience": self.audience,
        }
        # Only a tool call is bound to its execution; the session's other messages (initialize,
        # notifications, the GET stream) carry a plain token for the same tool's server.
        if method == "tools/call":
            digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
            exchange["execution_scope"] = {"htm": request.method, "htu": str(request.url),
                                           "exec_act": method, "inp_hash": digest}
        response = yield httpx.Request("POST", f"{self.toolgate}/v1/exchange/token", json=exchange)
        if response.status_code != 200:
            raise RuntimeError(f"exchange refused: {response.status_code} {response.text}")
        self.exchanges += 1
        request.headers["Authorization"] = "Bearer " + response.json()["access_token"]
        if self.tamper and method == "tools/call":
            changed = body + b" "
            request.stream = httpx.ByteStream(changed)
            request._content = changed
            request.headers["Content-Length"] = str(len(changed))
        yield request


async def main(url: str, toolgate: str, subject: str, audience: str, tamper: bool) -> int:
    auth = ExecutionBound(toolgate, subject, audience, tamper)
    code = await mcp_client.main(url, None, "run_job", auth=auth, arguments={"job": "nightly"})
    print(f"({auth.exchanges} tokens minted, tools/call ones bound to their execution)")
    return code


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(asyncio.run(main(args[0], args[1], args[2], args[3], len(args) > 4 and args[4] == "tamper")))
