"""Drive the gateway with the official MCP SDK's own Streamable HTTP client.

usage: mcp_client.py URL TOKEN TOOL [ARGUMENTS_JSON]   -> prints "OK <result text>" or "REFUSED <status> <detail>";
exit 0 when the call succeeded, 3 when it was refused at initialize, 4 when refused at the call."""
import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def httpx_path(url: str) -> str:
    """The path of the MCP endpoint URL (responses from elsewhere, e.g. an exchange, are not
    refusals of the call)."""
    rest = url.split("://", 1)[-1]
    return "/" + rest.split("/", 1)[1] if "/" in rest else "/"


def status_of(exc: BaseException) -> str:
    seen = [exc]
    while seen:
        e = seen.pop()
        resp = getattr(e, "response", None)
        if resp is not None and getattr(resp, "status_code", None):
            return str(resp.status_code)
        seen.extend(getattr(e, "exceptions", []) or [])
        if e.__cause__ is not None:
            seen.append(e.__cause__)
        if e.__context__ is not None:
            seen.append(e.__context__)
    text = repr(exc)
    for code in ("401", "403"):
        if code in text:
            return code
    return "error"


async def main(url: str, token: str | None, tool: str, auth=None, arguments=None, http=None) -> int:
    """Initialize, then call `tool`; with `auth` (an httpx Auth) instead of a fixed token, or on
    `http`, an httpx AsyncClient of the caller's (TLS settings, a client certificate)."""
    if http is None:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        http = create_mcp_http_client(headers=headers, auth=auth)
    refusals: list[str] = []

    async def on_response(response) -> None:  # the SDK turns HTTP errors into JSON-RPC errors
        if response.status_code >= 400 and response.url.path == httpx_path(url):
            challenge = response.headers.get("www-authenticate", "")
            if 'error="use_dpop_nonce"' in challenge and "dpop-nonce" in response.headers:
                return  # not a refusal: a DPoP auth flow retries it with the nonce (RFC 9449 §9)
            await response.aread()
            try:
                check = response.json().get("check", "")
            except ValueError:
                check = ""
            refusals.append(" ".join(p for p in (str(response.status_code), check, challenge) if p))

    http.event_hooks.setdefault("response", []).append(on_response)
    stage = "initialize"
    try:
        async with http:
            async with streamable_http_client(url, http_client=http, terminate_on_close=False) as streams:
                read, write = streams[0], streams[1]
                async with ClientSession(read, write) as session:
                    await asyncio.wait_for(session.initialize(), 20)
                    stage = "call"
                    arg = arguments or ({"query": "audience"} if tool == "code_search" else {"statement": "DROP TABLE users"})
                    result = await asyncio.wait_for(session.call_tool(tool, arg), 20)
                    if refusals or getattr(result, "is_error", False) or getattr(result, "isError", False):
                        print(f"REFUSED {refusals[-1] if refusals else 'tool-error'} at call")
                        return 4
                    text = " ".join(getattr(c, "text", "") for c in result.content)
                    print(f"OK {text}")
                    return 0
    except BaseException as exc:  # the SDK wraps HTTP failures in task groups
        if isinstance(exc, KeyboardInterrupt):
            raise
        status = refusals[-1] if refusals else status_of(exc)
        print(f"REFUSED {status} at {stage}")
        return 3 if stage == "initialize" else 4


if __name__ == "__main__":
    args = json.loads(sys.argv[4]) if len(sys.argv) > 4 else None
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], arguments=args)))
