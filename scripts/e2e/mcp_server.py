"""An MCP server written with the official Python SDK, exposing code_search, sql_admin and run_job over
Streamable HTTP. It knows nothing of toolgate: the gateway in front of it does the checking."""
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("e2e-tools")


@server.tool()
def code_search(query: str) -> str:
    """Search the code base."""
    return f"3 matches for {query!r}"


@server.tool()
def sql_admin(statement: str) -> str:
    """Run an administrative SQL statement."""
    return f"executed {statement!r}"


@server.tool()
def run_job(job: str) -> str:
    """Run a job: bound to each execution (requires_execution), so every call needs a token for
    exactly this request body."""
    return f"ran job {job!r}"


if __name__ == "__main__":
    port = int(sys.argv[1])
    server.run("streamable-http", host="127.0.0.1", port=port, streamable_http_path="/mcp")
