"""An MCP server written with the official Python SDK, exposing code_search, sql_admin and run_job over
Streamable HTTP. It knows nothing of toolgate: the gateway in front of it does the checking.

usage: mcp_server.py PORT [issues|billing]: with a name, one of the two servers of
scripts/e2e-two-servers.sh instead, each with one tool (issues: list_issues; billing: get_invoice)."""
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


def named(name: str) -> MCPServer:
    """The server called `name`, with its one tool."""
    one = MCPServer(name)
    if name == "issues":

        @one.tool()
        def list_issues(repo: str) -> str:
            """List the open issues of a repository."""
            return f"2 open issues in {repo}"

    elif name == "billing":

        @one.tool()
        def get_invoice(invoice: str) -> str:
            """Read an invoice."""
            return f"invoice {invoice}: 120.00 EUR"

    else:
        raise SystemExit(f"unknown server {name!r}: issues or billing")
    return one


if __name__ == "__main__":
    port = int(sys.argv[1])
    if len(sys.argv) > 2:
        server = named(sys.argv[2])
    server.run("streamable-http", host="127.0.0.1", port=port, streamable_http_path="/mcp")
