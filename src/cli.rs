//! The command line: `serve` runs the daemon; the other subcommands talk HTTP to a running one.

use argh::FromArgs;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use toolgate::client::{Client, ClientError};
use toolgate::clock::SystemClock;
use toolgate::config::{Config, ServeFlags};
use toolgate_guard::tls::ClientTls;

/// toolgate: bind every MCP tool call to a token minted for exactly that tool.
#[derive(FromArgs, Debug)]
pub(crate) struct Cli {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Serve(ServeCmd),
    Tool(ToolCmd),
    Token(TokenCmd),
    Verify(VerifyCmd),
    Revoke(RevokeCmd),
    Revocations(RevocationsCmd),
    Issuers(IssuersCmd),
    Audit(AuditCmd),
    Gateway(GatewayCmd),
    DevCerts(DevCertsCmd),
    Dpop(DpopCmd),
    Keys(KeysCmd),
}

/// toolgate's own signing keys: rotate, list.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "keys")]
struct KeysCmd {
    #[argh(subcommand)]
    action: KeysAction,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum KeysAction {
    Rotate(KeysRotate),
    List(KeysList),
}

/// Make a new signing key in a running daemon: published in the JWKS at once, signing after the
/// publish-ahead period (serve --publish-ahead, default 600 s); the key signing now stops then
/// and stays published until the last token it signed has expired. One at a time: refused
/// while a key is waiting to sign.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "rotate",
    note = "With --signing-key-file PATH, the daemon writes the new key beside it, in PATH.<kid> (0600)."
)]
struct KeysRotate {
    /// the new key's algorithm: ES256 (default) or EdDSA
    #[argh(option, default = "String::from(\"ES256\")")]
    alg: String,
    /// print the API's JSON instead of a table
    #[argh(switch)]
    json: bool,
    #[argh(
        option,
        description = "toolgate URL (default $TOOLGATE_URL or http://127.0.0.1:8693)"
    )]
    url: Option<String>,
    #[argh(
        option,
        description = "for an https:// URL, trust only the CA certificates in this PEM file (default $TOOLGATE_CA, else the system's roots)"
    )]
    toolgate_ca: Option<PathBuf>,
    #[argh(
        option,
        description = "for an https:// URL, also require this public key: sha256//<base64 SHA-256 of the certificate's SubjectPublicKeyInfo>, curl's --pinnedpubkey form (default $TOOLGATE_PIN)"
    )]
    toolgate_pin: Option<String>,
    #[argh(
        option,
        description = "file holding the admin token (default $TOOLGATE_ADMIN_TOKEN_FILE)"
    )]
    admin_token_file: Option<PathBuf>,
}

/// List a running daemon's signing keys: state (next, active, retiring, retired), algorithm
/// and dates (GET /v1/keys; admin or read-only token).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
struct KeysList {
    /// print the API's JSON instead of a table
    #[argh(switch)]
    json: bool,
    #[argh(
        option,
        description = "toolgate URL (default $TOOLGATE_URL or http://127.0.0.1:8693)"
    )]
    url: Option<String>,
    #[argh(
        option,
        description = "for an https:// URL, trust only the CA certificates in this PEM file (default $TOOLGATE_CA, else the system's roots)"
    )]
    toolgate_ca: Option<PathBuf>,
    #[argh(
        option,
        description = "for an https:// URL, also require this public key: sha256//<base64 SHA-256 of the certificate's SubjectPublicKeyInfo>, curl's --pinnedpubkey form (default $TOOLGATE_PIN)"
    )]
    toolgate_pin: Option<String>,
    #[argh(
        option,
        description = "file holding the admin token (default $TOOLGATE_ADMIN_TOKEN_FILE)"
    )]
    admin_token_file: Option<PathBuf>,
}

/// DPoP (RFC 9449) for shell scripts: make the proof a DPoP-bound token needs on each request.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "dpop")]
struct DpopCmd {
    #[argh(subcommand)]
    action: DpopAction,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum DpopAction {
    Proof(DpopProof),
}

/// Print a fresh DPoP proof (a signed JWT, for the DPoP header) for one request.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "proof",
    example = "curl -H \"Authorization: DPoP $TOKEN\" -H \"DPoP: $(toolgate dpop proof --key agent.key --method POST --url https://mcp.example.com/mcp --token \"$TOKEN\")\" ..."
)]
struct DpopProof {
    /// the client's private key (PKCS#8 PEM, as `token exchange --dpop-key` writes it)
    #[argh(option)]
    key: PathBuf,
    /// the request's HTTP method (htm)
    #[argh(option)]
    method: String,
    /// the request's URL (htu; query and fragment are left out)
    #[argh(option)]
    url: String,
    /// the access token sent with the request (its hash goes in ath); "-" reads it from standard input
    #[argh(option)]
    token: Option<String>,
    /// the server's nonce, when it asked for one (its DPoP-Nonce header)
    #[argh(option)]
    nonce: Option<String>,
    /// print this many proofs, one a line, each with its own jti (for load tests; default 1, at most 1000000)
    #[argh(option, default = "1")]
    count: u32,
}

/// Write a throw-away CA, a server certificate for localhost and 127.0.0.1, and a client SPIFFE
/// X.509-SVID (spiffe://dev.local/ns/demo/sa/agent-1) signed by it, for trying TLS locally.
/// Never for production.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "dev-certs",
    note = "Writes ca.pem, ca.key, server.pem, server.key, client.pem, client.key into DIR (keys mode 0600)."
)]
struct DevCertsCmd {
    /// the directory to write into (created if missing)
    #[argh(positional)]
    dir: PathBuf,
    /// replace files that are already there (without it, any existing one refuses the whole run)
    #[argh(switch)]
    force: bool,
}

/// Run a gateway in front of an MCP server (Streamable HTTP) or plain HTTP / A2A tool servers:
/// every request gets a tool or resource decision before it reaches the upstream.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "gateway")]
struct GatewayCmd {
    /// toolgate's URL (keys, tools and revocations come from there)
    #[argh(option, default = "String::from(\"http://127.0.0.1:8693\")")]
    toolgate: String,
    /// for an https:// toolgate, trust only the CA certificates in this PEM file (default: the system's roots)
    #[argh(option)]
    toolgate_ca: Option<PathBuf>,
    /// for an https:// toolgate, also require this public key: sha256//<base64 SHA-256 of its SubjectPublicKeyInfo>
    #[argh(option)]
    toolgate_pin: Option<String>,
    /// address to listen on (default 127.0.0.1:8700)
    #[argh(option, default = "String::from(\"127.0.0.1:8700\")")]
    listen: String,
    /// the upstream server's base URL, e.g. http://127.0.0.1:9000 or https://…
    #[argh(option)]
    upstream: String,
    /// for an https:// upstream, trust only the CA certificates in this PEM file (default: the system's roots)
    #[argh(option)]
    upstream_ca: Option<PathBuf>,
    /// tools registered with this server_id are this server's
    #[argh(option)]
    server_id: String,
    /// this server's resource URI (tokens for it pass initialize, tools/list, ping, GET, DELETE)
    #[argh(option)]
    resource: String,
    /// the MCP endpoint path (default /mcp)
    #[argh(option, default = "String::from(\"/mcp\")")]
    mcp_path: String,
    /// a plain HTTP or A2A route, PREFIX=TOOL_ID (repeatable); other paths are denied
    #[argh(option)]
    route: Vec<String>,
    /// the public URL of this gateway, for resource_metadata (default http://<listen>)
    #[argh(option)]
    public_url: Option<String>,
    /// a browser origin allowed besides the public URL's, e.g. https://app.example.com (repeatable); any other Origin is a 403
    #[argh(option)]
    allowed_origin: Vec<String>,
    /// most JSON-RPC messages in one batch; a larger one is a 400 (default 64)
    #[argh(option, default = "toolgate::gateway::DEFAULT_MAX_BATCH")]
    max_batch: usize,
    /// a path on which the gateway answers its own Prometheus metrics (default: none)
    #[argh(option)]
    metrics_path: Option<String>,
    /// deny everything when toolgate could not be reached for this many seconds (default 5)
    #[argh(option, default = "5")]
    max_staleness: u64,
    /// fetch toolgate's signing keys (JWKS) at least this often, in seconds, 1-3600 (default 60; and at once, at most every 2 s, on an unknown kid); keep it below toolgate's --publish-ahead
    #[argh(option, default = "60")]
    key_refresh: u64,
    /// clock skew allowed on token times, in seconds, 0-60 (default 60)
    #[argh(option, default = "60")]
    leeway: i64,
    /// tolerance on a DPoP proof's iat, both sides, in seconds, 1-300 (default 60)
    #[argh(option, default = "toolgate::dpop::DEFAULT_WINDOW")]
    dpop_window: i64,
    /// require this gateway's own DPoP nonces in proofs (answered use_dpop_nonce with a DPoP-Nonce header); off by default
    #[argh(switch)]
    dpop_nonce: bool,
    /// accept an access token of one of toolgate's authorization_servers whose aud lists --resource among other audiences (never one listing *); off by default: aud must be exactly --resource
    #[argh(switch)]
    allow_multi_audience: bool,
    #[argh(
        option,
        description = "file holding a token for toolgate: its reporter token (--reporter-token-file) is enough to read tools and report decisions in production"
    )]
    admin_token_file: Option<PathBuf>,
    /// serve TLS with this certificate chain (PEM, leaf first); reloaded on SIGHUP
    #[argh(option)]
    tls_cert: Option<PathBuf>,
    /// the TLS certificate's private key (PEM, owner-only); reloaded on SIGHUP
    #[argh(option)]
    tls_key: Option<PathBuf>,
    /// ask TLS clients for a certificate from these CAs (PEM; repeatable)
    #[argh(option)]
    client_ca: Vec<PathBuf>,
    /// with --client-ca: "optional" (default) or "required" (the handshake fails without one)
    #[argh(option)]
    client_auth: Option<String>,
    /// read the client certificate (URL-encoded PEM) from this header, sent by a TLS-terminating proxy; refused from anyone but a --trusted-proxy
    #[argh(option)]
    client_cert_header: Option<String>,
    /// the IP address of a TLS-terminating proxy whose --client-cert-header is read (repeatable)
    #[argh(option)]
    trusted_proxy: Vec<String>,
    /// allow plain HTTP on a non-loopback address (only behind a TLS-terminating proxy on a trusted network)
    #[argh(switch)]
    insecure_plaintext: bool,
}

/// The audit log: tail it, or verify its hash chain.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "audit")]
struct AuditCmd {
    #[argh(subcommand)]
    action: AuditAction,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum AuditAction {
    Tail(AuditTail),
    Verify(AuditVerify),
}

/// Show the newest audit rows from a running daemon.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "tail")]
struct AuditTail {
    /// how many rows (default 20)
    #[argh(option, default = "20")]
    limit: i64,
    /// only this decision (allow, deny, issued, denied, …)
    #[argh(option)]
    decision: Option<String>,
    /// only this tool
    #[argh(option)]
    tool_id: Option<String>,
    #[argh(
        option,
        description = "toolgate URL (default $TOOLGATE_URL or http://127.0.0.1:8693)"
    )]
    url: Option<String>,
    #[argh(
        option,
        description = "for an https:// URL, trust only the CA certificates in this PEM file (default $TOOLGATE_CA, else the system's roots)"
    )]
    toolgate_ca: Option<PathBuf>,
    #[argh(
        option,
        description = "for an https:// URL, also require this public key: sha256//<base64 SHA-256 of the certificate's SubjectPublicKeyInfo>, curl's --pinnedpubkey form (default $TOOLGATE_PIN)"
    )]
    toolgate_pin: Option<String>,
    #[argh(
        option,
        description = "file holding the admin token (default $TOOLGATE_ADMIN_TOKEN_FILE)"
    )]
    admin_token_file: Option<PathBuf>,
}

/// Check the audit log's hash chain in a database file and its head's tag under the audit key;
/// exit 1 at the first broken row or a head the key did not tag, 2 if the key is missing.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "verify")]
struct AuditVerify {
    /// the database file (default ./toolgate.db)
    #[argh(option, default = "PathBuf::from(toolgate::config::DEFAULT_DB)")]
    db: PathBuf,
    /// the audit key file (default: the database's path + .audit-key)
    #[argh(option)]
    key_file: Option<PathBuf>,
}

/// Revoke a subject, one token or a tool at once (the operator's signal).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "revoke")]
struct RevokeCmd {
    #[argh(subcommand)]
    what: RevokeWhat,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum RevokeWhat {
    Subject(RevokeSubject),
    Token(RevokeToken),
    Tool(RevokeTool),
}

/// Revoke a subject: every token for it is refused and it cannot exchange.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "subject")]
struct RevokeSubject {
    /// the subject: a URI (wimse://…, spiffe://…), an email, an opaque id, or a sub with --issuer
    #[argh(positional)]
    value: String,
    /// uri (default), email, iss_sub or opaque
    #[argh(option, default = "String::from(\"uri\")")]
    format: String,
    /// the issuer, for --format iss_sub
    #[argh(option)]
    issuer: Option<String>,
    #[argh(option, description = "why (recorded)")]
    reason: Option<String>,
    #[argh(option, description = "lift automatically after this many seconds")]
    expires_in: Option<i64>,
    #[argh(
        option,
        description = "toolgate URL (default $TOOLGATE_URL or http://127.0.0.1:8693)"
    )]
    url: Option<String>,
    #[argh(
        option,
        description = "for an https:// URL, trust only the CA certificates in this PEM file (default $TOOLGATE_CA, else the system's roots)"
    )]
    toolgate_ca: Option<PathBuf>,
    #[argh(
        option,
        description = "for an https:// URL, also require this public key: sha256//<base64 SHA-256 of the certificate's SubjectPublicKeyInfo>, curl's --pinnedpubkey form (default $TOOLGATE_PIN)"
    )]
    toolgate_pin: Option<String>,
    #[argh(
        option,
        description = "file holding the admin token (default $TOOLGATE_ADMIN_TOKEN_FILE)"
    )]
    admin_token_file: Option<PathBuf>,
}

/// Revoke one token by its jti.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "token",
    note = "A jti is base64url and may start with '-': put it after `--`, as in\n`toolgate revoke token -- <jti>`."
)]
struct RevokeToken {
    /// the token's jti (after `--` if it starts with '-')
    #[argh(positional)]
    jti: String,
    #[argh(option, description = "why (recorded)")]
    reason: Option<String>,
    #[argh(option, description = "lift automatically after this many seconds")]
    expires_in: Option<i64>,
    #[argh(
        option,
        description = "toolgate URL (default $TOOLGATE_URL or http://127.0.0.1:8693)"
    )]
    url: Option<String>,
    #[argh(
        option,
        description = "for an https:// URL, trust only the CA certificates in this PEM file (default $TOOLGATE_CA, else the system's roots)"
    )]
    toolgate_ca: Option<PathBuf>,
    #[argh(
        option,
        description = "for an https:// URL, also require this public key: sha256//<base64 SHA-256 of the certificate's SubjectPublicKeyInfo>, curl's --pinnedpubkey form (default $TOOLGATE_PIN)"
    )]
    toolgate_pin: Option<String>,
    #[argh(
        option,
        description = "file holding the admin token (default $TOOLGATE_ADMIN_TOKEN_FILE)"
    )]
    admin_token_file: Option<PathBuf>,
}

/// Revoke a tool: every call to it is refused until lifted.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "tool")]
struct RevokeTool {
    /// the tool_id
    #[argh(positional)]
    tool_id: String,
    #[argh(option, description = "why (recorded)")]
    reason: Option<String>,
    #[argh(option, description = "lift automatically after this many seconds")]
    expires_in: Option<i64>,
    #[argh(
        option,
        description = "toolgate URL (default $TOOLGATE_URL or http://127.0.0.1:8693)"
    )]
    url: Option<String>,
    #[argh(
        option,
        description = "for an https:// URL, trust only the CA certificates in this PEM file (default $TOOLGATE_CA, else the system's roots)"
    )]
    toolgate_ca: Option<PathBuf>,
    #[argh(
        option,
        description = "for an https:// URL, also require this public key: sha256//<base64 SHA-256 of the certificate's SubjectPublicKeyInfo>, curl's --pinnedpubkey form (default $TOOLGATE_PIN)"
    )]
    toolgate_pin: Option<String>,
    #[argh(
        option,
        description = "file holding the admin token (default $TOOLGATE_ADMIN_TOKEN_FILE)"
    )]
    admin_token_file: Option<PathBuf>,
}

/// List active revocations, or lift one with --lift ID.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "revocations")]
struct RevocationsCmd {
    /// lift (delete) the revocation with this id
    #[argh(option)]
    lift: Option<i64>,
    /// print the API's JSON instead of a table
    #[argh(switch)]
    json: bool,
    /// list entries with an id greater than this (paging)
    #[argh(option, default = "0")]
    after: i64,
    /// at most this many entries (default 100)
    #[argh(option, default = "100")]
    limit: i64,
    #[argh(
        option,
        description = "toolgate URL (default $TOOLGATE_URL or http://127.0.0.1:8693)"
    )]
    url: Option<String>,
    #[argh(
        option,
        description = "for an https:// URL, trust only the CA certificates in this PEM file (default $TOOLGATE_CA, else the system's roots)"
    )]
    toolgate_ca: Option<PathBuf>,
    #[argh(
        option,
        description = "for an https:// URL, also require this public key: sha256//<base64 SHA-256 of the certificate's SubjectPublicKeyInfo>, curl's --pinnedpubkey form (default $TOOLGATE_PIN)"
    )]
    toolgate_pin: Option<String>,
    #[argh(
        option,
        description = "file holding the admin token (default $TOOLGATE_ADMIN_TOKEN_FILE)"
    )]
    admin_token_file: Option<PathBuf>,
}

/// Show the trusted issuers (role subject), signal transmitters (signals) and authorization
/// servers (resource): where their keys come from, the keys' kids, the last fetch and its
/// result.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "issuers")]
struct IssuersCmd {
    /// print the API's JSON instead of a table
    #[argh(switch)]
    json: bool,
    #[argh(
        option,
        description = "toolgate URL (default $TOOLGATE_URL or http://127.0.0.1:8693)"
    )]
    url: Option<String>,
    #[argh(
        option,
        description = "for an https:// URL, trust only the CA certificates in this PEM file (default $TOOLGATE_CA, else the system's roots)"
    )]
    toolgate_ca: Option<PathBuf>,
    #[argh(
        option,
        description = "for an https:// URL, also require this public key: sha256//<base64 SHA-256 of the certificate's SubjectPublicKeyInfo>, curl's --pinnedpubkey form (default $TOOLGATE_PIN)"
    )]
    toolgate_pin: Option<String>,
    #[argh(
        option,
        description = "file holding the admin (or read-only) token (default $TOOLGATE_ADMIN_TOKEN_FILE)"
    )]
    admin_token_file: Option<PathBuf>,
}

/// Run the daemon (REST API, signing key, SQLite database).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "serve")]
struct ServeCmd {
    /// address to listen on (default 127.0.0.1:8693)
    #[argh(option)]
    listen: Option<String>,
    /// SQLite database file, created on first start (default ./toolgate.db)
    #[argh(option)]
    db: Option<PathBuf>,
    /// keep the token-signing key in this PKCS#8 PEM file (owner-only; generated, or moved out of the database, if missing) instead of the database
    #[argh(option)]
    signing_key_file: Option<PathBuf>,
    /// the `iss` of minted tokens (default http://<listen address>)
    #[argh(option)]
    issuer: Option<String>,
    /// trust domain of WIMSE subjects (default dev.local in dev mode, else the issuer's host)
    #[argh(option)]
    trust_domain: Option<String>,
    /// development mode: unsigned stub subject tokens, any audience, no admin token; loopback only
    #[argh(switch)]
    dev: bool,
    /// file holding the admin bearer token (required without --dev; re-read when it changes)
    #[argh(option)]
    admin_token_file: Option<PathBuf>,
    /// file holding a reporter token: reads tools, keys and revocations, posts decisions (for gateways and guards)
    #[argh(option)]
    reporter_token_file: Option<PathBuf>,
    /// file holding a read-only token: every read, no change
    #[argh(option)]
    read_token_file: Option<PathBuf>,
    /// serve the tool lists, /metrics and the revocation export without a token (dev implies it)
    #[argh(switch)]
    open_reads: bool,
    /// a host name requests may carry in Host, besides the listen address, localhost and the issuer's host (repeatable)
    #[argh(option)]
    allowed_host: Vec<String>,
    /// an origin (scheme://host[:port]) whose pages may make state-changing calls (repeatable)
    #[argh(option)]
    allowed_origin: Vec<String>,
    /// JSON config file: issuer, trust_domain, token_ttl_seconds, trusted_issuers, transmitters, authorization_servers, key_rotation_days, … (see README)
    #[argh(option)]
    config: Option<PathBuf>,
    /// serve TLS with this certificate chain (PEM, leaf first); reloaded on SIGHUP
    #[argh(option)]
    tls_cert: Option<PathBuf>,
    /// the TLS certificate's private key (PEM, owner-only); reloaded on SIGHUP
    #[argh(option)]
    tls_key: Option<PathBuf>,
    /// ask TLS clients for a certificate from these CAs (PEM; repeatable)
    #[argh(option)]
    client_ca: Vec<PathBuf>,
    /// with --client-ca: "optional" (default) or "required" (the handshake fails without one)
    #[argh(option)]
    client_auth: Option<String>,
    /// read the client certificate (URL-encoded PEM) from this header, sent by a TLS-terminating proxy; refused from anyone but a --trusted-proxy
    #[argh(option)]
    client_cert_header: Option<String>,
    /// the IP address of a TLS-terminating proxy whose --client-cert-header is read (repeatable)
    #[argh(option)]
    trusted_proxy: Vec<String>,
    /// allow plain HTTP on a non-loopback address (only behind a TLS-terminating proxy on a trusted network)
    #[argh(switch)]
    insecure_plaintext: bool,
    /// seconds a DPoP proof's iat may be off, both ways (default 60, at most 300)
    #[argh(option)]
    dpop_window: Option<i64>,
    /// the token endpoint requires this daemon's DPoP nonces (answers use_dpop_nonce with a DPoP-Nonce header)
    #[argh(switch)]
    dpop_nonce: bool,
    /// seconds a new signing key (keys rotate) is published before it signs: longer than any guard's JWKS refresh (default 600, at most 604800; key_publish_ahead_seconds in the config file)
    #[argh(option)]
    publish_ahead: Option<i64>,
}

/// The TLS flags of a `serve` or `gateway` command line.
macro_rules! tls_flags {
    ($cmd:expr) => {
        toolgate::config::TlsFlags {
            tls_cert: $cmd.tls_cert,
            tls_key: $cmd.tls_key,
            client_ca: $cmd.client_ca,
            client_auth: $cmd.client_auth,
            client_cert_header: $cmd.client_cert_header,
            trusted_proxies: $cmd.trusted_proxy,
            insecure_plaintext: $cmd.insecure_plaintext,
        }
    };
}

/// Options shared by the client subcommands.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "tool")]
/// Manage the tool registry: add, update, list, rm.
struct ToolCmd {
    #[argh(subcommand)]
    action: ToolAction,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum ToolAction {
    Add(ToolAdd),
    Update(ToolUpdate),
    List(ToolList),
    Rm(ToolRm),
}

/// Register a tool with its RFC 8707 resource URI.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "add")]
struct ToolAdd {
    /// tool id (1-128 of A-Z a-z 0-9 . _ : -)
    #[argh(positional)]
    tool_id: String,
    /// the tool's resource URI: tokens for it carry exactly this `aud`
    #[argh(option)]
    resource: String,
    /// display name
    #[argh(option)]
    name: Option<String>,
    /// description
    #[argh(option)]
    description: Option<String>,
    /// the MCP server hosting the tool
    #[argh(option)]
    server_id: Option<String>,
    /// a capability the token must carry (repeatable)
    #[argh(option)]
    require_cap: Vec<String>,
    /// maximum blast radius, level[:scope]
    #[argh(option)]
    max_blast_radius: Option<String>,
    /// mtls: tokens for this tool must be bound to the client certificate of the exchange (RFC 8705); dpop: to the key of the exchange's DPoP proof (RFC 9449)
    #[argh(option)]
    sender_constraint: Option<String>,
    /// protocol spoken: mcp, http, a2a (repeatable; default mcp)
    #[argh(option)]
    protocol: Vec<String>,
    #[argh(
        option,
        description = "toolgate URL (default $TOOLGATE_URL or http://127.0.0.1:8693)"
    )]
    url: Option<String>,
    #[argh(
        option,
        description = "for an https:// URL, trust only the CA certificates in this PEM file (default $TOOLGATE_CA, else the system's roots)"
    )]
    toolgate_ca: Option<PathBuf>,
    #[argh(
        option,
        description = "for an https:// URL, also require this public key: sha256//<base64 SHA-256 of the certificate's SubjectPublicKeyInfo>, curl's --pinnedpubkey form (default $TOOLGATE_PIN)"
    )]
    toolgate_pin: Option<String>,
    #[argh(
        option,
        description = "file holding the admin token (default $TOOLGATE_ADMIN_TOKEN_FILE)"
    )]
    admin_token_file: Option<PathBuf>,
}

/// Replace a registered tool's entry in place (the whole entry: options left out take their
/// defaults); its revocations and `registered_at` stay.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "update")]
struct ToolUpdate {
    /// the registered tool's id
    #[argh(positional)]
    tool_id: String,
    /// the tool's resource URI: tokens for it carry exactly this `aud`
    #[argh(option)]
    resource: String,
    /// display name
    #[argh(option)]
    name: Option<String>,
    /// description
    #[argh(option)]
    description: Option<String>,
    /// the MCP server hosting the tool
    #[argh(option)]
    server_id: Option<String>,
    /// a capability the token must carry (repeatable)
    #[argh(option)]
    require_cap: Vec<String>,
    /// maximum blast radius, level[:scope]
    #[argh(option)]
    max_blast_radius: Option<String>,
    /// mtls: tokens for this tool must be bound to the client certificate of the exchange (RFC 8705); dpop: to the key of the exchange's DPoP proof (RFC 9449)
    #[argh(option)]
    sender_constraint: Option<String>,
    /// protocol spoken: mcp, http, a2a (repeatable; default mcp)
    #[argh(option)]
    protocol: Vec<String>,
    #[argh(
        option,
        description = "toolgate URL (default $TOOLGATE_URL or http://127.0.0.1:8693)"
    )]
    url: Option<String>,
    #[argh(
        option,
        description = "for an https:// URL, trust only the CA certificates in this PEM file (default $TOOLGATE_CA, else the system's roots)"
    )]
    toolgate_ca: Option<PathBuf>,
    #[argh(
        option,
        description = "for an https:// URL, also require this public key: sha256//<base64 SHA-256 of the certificate's SubjectPublicKeyInfo>, curl's --pinnedpubkey form (default $TOOLGATE_PIN)"
    )]
    toolgate_pin: Option<String>,
    #[argh(
        option,
        description = "file holding the admin token (default $TOOLGATE_ADMIN_TOKEN_FILE)"
    )]
    admin_token_file: Option<PathBuf>,
}

/// List registered tools.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
struct ToolList {
    /// only tools speaking this protocol
    #[argh(option)]
    protocol: Option<String>,
    /// print the API's JSON instead of a table
    #[argh(switch)]
    json: bool,
    #[argh(
        option,
        description = "toolgate URL (default $TOOLGATE_URL or http://127.0.0.1:8693)"
    )]
    url: Option<String>,
    #[argh(
        option,
        description = "for an https:// URL, trust only the CA certificates in this PEM file (default $TOOLGATE_CA, else the system's roots)"
    )]
    toolgate_ca: Option<PathBuf>,
    #[argh(
        option,
        description = "for an https:// URL, also require this public key: sha256//<base64 SHA-256 of the certificate's SubjectPublicKeyInfo>, curl's --pinnedpubkey form (default $TOOLGATE_PIN)"
    )]
    toolgate_pin: Option<String>,
    #[argh(
        option,
        description = "file holding the admin token (default $TOOLGATE_ADMIN_TOKEN_FILE)"
    )]
    admin_token_file: Option<PathBuf>,
}

/// Deregister a tool.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "rm")]
struct ToolRm {
    /// tool id
    #[argh(positional)]
    tool_id: String,
    #[argh(
        option,
        description = "toolgate URL (default $TOOLGATE_URL or http://127.0.0.1:8693)"
    )]
    url: Option<String>,
    #[argh(
        option,
        description = "for an https:// URL, trust only the CA certificates in this PEM file (default $TOOLGATE_CA, else the system's roots)"
    )]
    toolgate_ca: Option<PathBuf>,
    #[argh(
        option,
        description = "for an https:// URL, also require this public key: sha256//<base64 SHA-256 of the certificate's SubjectPublicKeyInfo>, curl's --pinnedpubkey form (default $TOOLGATE_PIN)"
    )]
    toolgate_pin: Option<String>,
    #[argh(
        option,
        description = "file holding the admin token (default $TOOLGATE_ADMIN_TOKEN_FILE)"
    )]
    admin_token_file: Option<PathBuf>,
}

/// Tokens: exchange.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "token")]
struct TokenCmd {
    #[argh(subcommand)]
    action: TokenAction,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum TokenAction {
    Exchange(TokenExchange),
}

/// Exchange a subject token for a token bound to one tool's resource (RFC 8693). Prints the
/// access token alone, or the whole response with --json.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "exchange")]
struct TokenExchange {
    /// the tool's resource URI (the token's `aud`)
    #[argh(option)]
    audience: String,
    /// the subject token; "-" reads it from standard input
    #[argh(option)]
    subject_token: String,
    /// subject token type URI (default urn:ietf:params:oauth:token-type:jwt)
    #[argh(option)]
    subject_token_type: Option<String>,
    /// space-separated scopes to request
    #[argh(option)]
    scope: Option<String>,
    /// print the whole JSON response
    #[argh(switch)]
    json: bool,
    /// bind the token to this DPoP key (PKCS#8 PEM; a new P-256 key is written there, owner-only, if the file is missing): the token is then presented as "Authorization: DPoP" with a proof from `toolgate dpop proof`
    #[argh(option)]
    dpop_key: Option<PathBuf>,
    #[argh(
        option,
        description = "toolgate URL (default $TOOLGATE_URL or http://127.0.0.1:8693)"
    )]
    url: Option<String>,
    #[argh(
        option,
        description = "for an https:// URL, trust only the CA certificates in this PEM file (default $TOOLGATE_CA, else the system's roots)"
    )]
    toolgate_ca: Option<PathBuf>,
    #[argh(
        option,
        description = "for an https:// URL, also require this public key: sha256//<base64 SHA-256 of the certificate's SubjectPublicKeyInfo>, curl's --pinnedpubkey form (default $TOOLGATE_PIN)"
    )]
    toolgate_pin: Option<String>,
}

/// Verify a token for a tool: exit 0 when allowed, 1 when denied (the check is printed).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "verify")]
struct VerifyCmd {
    /// the tool id the call is for
    #[argh(option)]
    tool_id: String,
    /// the token; "-" reads it from standard input
    #[argh(option)]
    token: String,
    #[argh(
        option,
        description = "toolgate URL (default $TOOLGATE_URL or http://127.0.0.1:8693)"
    )]
    url: Option<String>,
    #[argh(
        option,
        description = "for an https:// URL, trust only the CA certificates in this PEM file (default $TOOLGATE_CA, else the system's roots)"
    )]
    toolgate_ca: Option<PathBuf>,
    #[argh(
        option,
        description = "for an https:// URL, also require this public key: sha256//<base64 SHA-256 of the certificate's SubjectPublicKeyInfo>, curl's --pinnedpubkey form (default $TOOLGATE_PIN)"
    )]
    toolgate_pin: Option<String>,
}

/// Parse arguments and run; the binary's whole `main`.
pub(crate) fn main() -> ExitCode {
    let cli: Cli = argh::from_env();
    let runtime = match cli.command {
        Command::Serve(_) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("toolgate: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve(s) => serve(s).await,
        Command::Tool(t) => match t.action {
            ToolAction::Add(a) => tool_add(a).await,
            ToolAction::Update(u) => tool_update(u).await,
            ToolAction::List(l) => {
                let path = match &l.protocol {
                    Some(p) if toolgate::registry::PROTOCOLS.contains(&p.as_str()) => {
                        format!("/v1/tools?protocol={p}")
                    }
                    Some(_) => return usage("--protocol must be mcp, http or a2a"),
                    None => "/v1/tools".to_string(),
                };
                let json = l.json;
                finish(
                    client(
                        l.url,
                        client_tls(l.toolgate_ca, l.toolgate_pin),
                        l.admin_token_file,
                    )
                    .map(|c| (c, path)),
                    |(c, path)| async move {
                        let (status, body) = c.send(http::Method::GET, &path, None).await?;
                        if !status.is_success() {
                            return Err(ClientError::Api { status, body });
                        }
                        if json {
                            return Ok(body);
                        }
                        say(&crate::table::tools(&body));
                        Ok(Value::Null)
                    },
                )
                .await
            }
            ToolAction::Rm(r) => {
                if !toolgate::registry::valid_id(&r.tool_id) {
                    return usage("tool id must be 1-128 characters of A-Z a-z 0-9 . _ : -");
                }
                let id = r.tool_id;
                finish(
                    client(
                        r.url,
                        client_tls(r.toolgate_ca, r.toolgate_pin),
                        r.admin_token_file,
                    ),
                    |c| async move { c.deregister_tool(&id).await },
                )
                .await
            }
        },
        Command::Token(t) => match t.action {
            TokenAction::Exchange(x) => token_exchange(x).await,
        },
        Command::Verify(v) => verify(v).await,
        Command::Revoke(r) => revoke(r.what).await,
        Command::Gateway(g) => gateway(g).await,
        Command::DevCerts(d) => dev_certs(&d.dir, d.force),
        Command::Dpop(d) => match d.action {
            DpopAction::Proof(p) => dpop_proof(p),
        },
        Command::Keys(k) => match k.action {
            KeysAction::Rotate(r) => keys_rotate(r).await,
            KeysAction::List(l) => keys_list(l).await,
        },
        Command::Audit(a) => match a.action {
            AuditAction::Verify(v) => audit_verify(&v.db, v.key_file),
            AuditAction::Tail(t) => {
                let mut path = format!("/v1/audit?limit={}", t.limit.clamp(1, 1000));
                for (k, v) in [("decision", &t.decision), ("tool_id", &t.tool_id)] {
                    if let Some(v) = v {
                        if !toolgate::registry::valid_id(v) {
                            return usage(&format!(
                                "--{} must be 1-128 characters of A-Z a-z 0-9 . _ : -",
                                k.replace('_', "-")
                            ));
                        }
                        path.push_str(&format!("&{k}={v}"));
                    }
                }
                finish(
                    client(
                        t.url,
                        client_tls(t.toolgate_ca, t.toolgate_pin),
                        t.admin_token_file,
                    )
                    .map(|c| (c, path)),
                    |(c, path)| async move {
                        let (status, body) = c.send(http::Method::GET, &path, None).await?;
                        if !status.is_success() {
                            return Err(ClientError::Api { status, body });
                        }
                        let mut lines = Vec::new();
                        let events = body.get("events").and_then(Value::as_array);
                        for e in events.into_iter().flatten().rev() {
                            // Rows record what requests said: shown with controls escaped.
                            let f = |k: &str| {
                                let v = e.get(k).and_then(Value::as_str).unwrap_or("");
                                toolgate::log::escape_controls(v).into_owned()
                            };
                            let count = e.get("count").and_then(Value::as_i64).unwrap_or(1);
                            lines.push(format!(
                                "{} #{} {:<12} {:<14} {:<10} {} {} {}{}",
                                f("time"),
                                e.get("seq").and_then(Value::as_i64).unwrap_or(0),
                                f("kind"),
                                f("decision"),
                                f("check"),
                                f("target"),
                                f("subject"),
                                f("reason"),
                                if count == 1 {
                                    String::new()
                                } else {
                                    format!(" (x{count})")
                                }
                            ));
                        }
                        say(&lines.join("\n"));
                        Ok(Value::Null)
                    },
                )
                .await
            }
        },
        Command::Issuers(i) => {
            let json = i.json;
            finish(
                client(
                    i.url,
                    client_tls(i.toolgate_ca, i.toolgate_pin),
                    i.admin_token_file,
                ),
                |c| async move {
                    let body = c.issuers().await?;
                    if json {
                        return Ok(body);
                    }
                    say(&crate::table::issuers(&body));
                    Ok(Value::Null)
                },
            )
            .await
        }
        Command::Revocations(r) => {
            let (after, limit, lift, json) = (r.after, r.limit, r.lift, r.json);
            finish(
                client(
                    r.url,
                    client_tls(r.toolgate_ca, r.toolgate_pin),
                    r.admin_token_file,
                ),
                |c| async move {
                    match lift {
                        Some(id) => c.lift_revocation(id).await,
                        None if json => c.revocations(after, limit).await,
                        None => {
                            let body = c.revocations(after, limit).await?;
                            say(&crate::table::revocations(&body));
                            Ok(Value::Null)
                        }
                    }
                },
            )
            .await
        }
    }
}

async fn revoke(what: RevokeWhat) -> ExitCode {
    let (body, url, tls, token_file) = match what {
        RevokeWhat::Subject(s) => (
            json!({"kind": "subject", "format": s.format, "value": s.value, "issuer": s.issuer,
                   "reason": s.reason, "expires_in": s.expires_in}),
            s.url,
            client_tls(s.toolgate_ca, s.toolgate_pin),
            s.admin_token_file,
        ),
        RevokeWhat::Token(t) => (
            json!({"kind": "token", "value": t.jti, "reason": t.reason, "expires_in": t.expires_in}),
            t.url,
            client_tls(t.toolgate_ca, t.toolgate_pin),
            t.admin_token_file,
        ),
        RevokeWhat::Tool(t) => (
            json!({"kind": "tool", "value": t.tool_id, "reason": t.reason, "expires_in": t.expires_in}),
            t.url,
            client_tls(t.toolgate_ca, t.toolgate_pin),
            t.admin_token_file,
        ),
    };
    finish(client(url, tls, token_file), |c| async move {
        c.revoke(&body).await
    })
    .await
}

async fn serve(s: ServeCmd) -> ExitCode {
    let flags = ServeFlags {
        listen: s.listen,
        db: s.db,
        signing_key_file: s.signing_key_file,
        issuer: s.issuer,
        trust_domain: s.trust_domain,
        dev: s.dev,
        admin_token_file: s.admin_token_file,
        reporter_token_file: s.reporter_token_file,
        read_token_file: s.read_token_file,
        open_reads: s.open_reads,
        allowed_hosts: s.allowed_host,
        allowed_origins: s.allowed_origin,
        config: s.config,
        tls: tls_flags!(s),
        dpop_window: s.dpop_window,
        dpop_nonce: s.dpop_nonce,
        publish_ahead: s.publish_ahead,
    };
    let config = match Config::from_flags(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("toolgate: {e}");
            return ExitCode::from(2);
        }
    };
    if config.dev {
        log_warn!("DEV MODE: unsigned stub subject tokens and any audience are accepted, admin calls need no token. Never expose this listener.");
    }
    let db = config.db_path.display().to_string();
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    match toolgate::server::start(
        config,
        Arc::new(SystemClock),
        toolgate::server::shutdown_signal(),
    )
    .await
    {
        Ok(running) => {
            log_info!(
                "toolgate {} listening on {scheme}://{} (database {db})",
                toolgate::app::VERSION,
                running.addr
            );
            match running.wait().await {
                Ok(()) => {
                    log_info!("toolgate stopped");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    log_error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("toolgate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn gateway(g: GatewayCmd) -> ExitCode {
    let listen: std::net::SocketAddr = match g.listen.parse() {
        Ok(a) => a,
        Err(_) => return usage("--listen must be IP:port"),
    };
    // The daemon's rule for its own window: 1 to 300 seconds.
    if let Err(e) = toolgate::config::dpop_window(g.dpop_window, "--dpop-window") {
        return usage(&e.to_string());
    }
    if !(1..=3600).contains(&g.key_refresh) {
        return usage("--key-refresh must be between 1 and 3600 seconds");
    }
    let mut routes = Vec::new();
    for r in &g.route {
        match r.split_once('=') {
            Some((prefix, tool))
                if prefix.starts_with('/') && toolgate::registry::valid_id(tool) =>
            {
                routes.push((prefix.to_string(), tool.to_string()))
            }
            _ => return usage("--route must be /path-prefix=tool_id"),
        }
    }
    let admin_token = match &g.admin_token_file {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => return usage(&format!("cannot read {}: {e}", p.display())),
        },
        None => std::env::var_os("TOOLGATE_ADMIN_TOKEN_FILE")
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| t.trim().to_string()),
    };
    let tls = match tls_flags!(g).validate(listen, true) {
        Ok(tls) => tls,
        Err(e) => return usage(&e.0),
    };
    let scheme = if tls.tls.is_some() { "https" } else { "http" };
    let public = g
        .public_url
        .unwrap_or_else(|| format!("{scheme}://{listen}"));
    let mut toolgate_tls = ClientTls::new();
    if let Some(ca) = g.toolgate_ca {
        toolgate_tls = toolgate_tls.ca_file(ca);
    }
    if let Some(pin) = g.toolgate_pin {
        toolgate_tls = toolgate_tls.pin(pin);
    }
    let upstream_tls = match g.upstream_ca {
        Some(ca) => ClientTls::new().ca_file(ca),
        None => ClientTls::new(),
    };
    let cfg = toolgate::gateway::GatewayConfig {
        listen,
        upstream: g.upstream,
        upstream_tls,
        mcp_path: g.mcp_path,
        routes,
        max_connections: 1024,
        max_batch: g.max_batch,
        allowed_origins: g.allowed_origin,
        metrics_path: g.metrics_path,
        tls,
        guard: toolgate::guard::GuardConfig {
            toolgate: g.toolgate,
            toolgate_tls,
            admin_token,
            resource: g.resource,
            server_id: Some(g.server_id),
            public_url: public,
            max_staleness: std::time::Duration::from_secs(g.max_staleness.max(1)),
            poll_interval: std::time::Duration::from_millis(250),
            key_refresh: std::time::Duration::from_secs(g.key_refresh),
            leeway: g.leeway,
            max_batch: g.max_batch,
            dpop_window: g.dpop_window,
            dpop_nonce: g.dpop_nonce,
            allow_multi_audience: g.allow_multi_audience,
        },
    };
    match toolgate::gateway::run(cfg, toolgate::server::shutdown_signal()).await {
        Ok(()) => {
            log_info!("gateway stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("toolgate gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dev_certs(dir: &std::path::Path, force: bool) -> ExitCode {
    use toolgate::clock::Clock as _;
    match toolgate::dev_certs::write(dir, force, SystemClock.now()) {
        Ok(paths) => {
            for p in paths {
                say(&p.display().to_string());
            }
            ExitCode::SUCCESS
        }
        Err(e) => usage(&e.to_string()),
    }
}

/// Walk the chain offline (the daemon may be running: WAL readers see a consistent snapshot),
/// and check its head's tag with the audit key: without the key, a writer of the database
/// alone could have rewritten the whole log consistently, so "intact" is not said.
fn audit_verify(db: &std::path::Path, key_file: Option<PathBuf>) -> ExitCode {
    if !db.exists() {
        return usage(&format!("no database at {}", db.display()));
    }
    let key_path = key_file.unwrap_or_else(|| toolgate::config::default_audit_key_path(db));
    let key = match toolgate::audit::read_key_file(&key_path) {
        Ok(key) => key,
        Err(e) => return usage(&e),
    };
    let conn =
        match rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        {
            Ok(c) => c,
            Err(e) => return usage(&format!("cannot open {}: {e}", db.display())),
        };
    match toolgate::store::audit::verify_chain(&conn, key.as_ref()) {
        Ok(Ok(rows)) if key.is_some() => {
            say(&format!(
                "audit chain intact: {rows} rows; its head is tagged with the audit key"
            ));
            ExitCode::SUCCESS
        }
        Ok(Ok(rows)) => {
            say(&format!(
                "audit chain consistent: {rows} rows, but its head was not checked: no audit key at {} (give --key-file); a writer of the database alone could have rewritten it",
                key_path.display()
            ));
            ExitCode::from(2)
        }
        Ok(Err(broken)) => {
            say(&format!("audit chain BROKEN: {broken}"));
            ExitCode::FAILURE
        }
        Err(e) => usage(&format!("cannot read the audit log: {e}")),
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("toolgate: {msg}");
    ExitCode::from(2)
}

/// The trust for an `https://` toolgate: `--toolgate-ca` / `--toolgate-pin`, else
/// `$TOOLGATE_CA` / `$TOOLGATE_PIN`, else the system's roots and no pin.
fn client_tls(ca: Option<PathBuf>, pin: Option<String>) -> ClientTls {
    let mut tls = ClientTls::new();
    if let Some(ca) = ca.or_else(|| std::env::var_os("TOOLGATE_CA").map(PathBuf::from)) {
        tls = tls.ca_file(ca);
    }
    if let Some(pin) = pin.or_else(|| std::env::var("TOOLGATE_PIN").ok()) {
        tls = tls.pin(pin);
    }
    tls
}

fn client(
    url: Option<String>,
    tls: ClientTls,
    admin_token_file: Option<PathBuf>,
) -> Result<Client, ClientError> {
    let url = url
        .or_else(|| std::env::var("TOOLGATE_URL").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8693".to_string());
    let mut c = Client::with_tls(&url, &tls)?;
    let file = admin_token_file
        .or_else(|| std::env::var_os("TOOLGATE_ADMIN_TOKEN_FILE").map(PathBuf::from));
    if let Some(path) = file {
        let secret = std::fs::read_to_string(&path).map_err(|e| {
            ClientError::Url(format!(
                "cannot read admin token file {}: {e}",
                path.display()
            ))
        })?;
        c = c.with_admin_token(secret.trim());
    }
    Ok(c)
}

/// Print a JSON result (exit 0) or the error (exit 1 for an API error, 2 otherwise).
async fn finish<T, F, Fut>(prepared: Result<T, ClientError>, call: F) -> ExitCode
where
    F: FnOnce(T) -> Fut,
    Fut: std::future::Future<Output = Result<Value, ClientError>>,
{
    let result = match prepared {
        Ok(p) => call(p).await,
        Err(e) => Err(e),
    };
    report(result, |v| {
        if !v.is_null() {
            say(&pretty(&v))
        }
    })
}

fn report(result: Result<Value, ClientError>, ok: impl FnOnce(Value)) -> ExitCode {
    match result {
        Ok(v) => {
            ok(v);
            ExitCode::SUCCESS
        }
        Err(ClientError::Api { status, body }) => {
            eprintln!("toolgate: HTTP {}", status.as_u16());
            say(&pretty(&body));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("toolgate: {e}");
            ExitCode::from(2)
        }
    }
}

/// Print a line; a closed pipe (`| head`) is not an error worth a panic.
fn say(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// A secret argument, or standard input for "-" (keeps tokens out of the process list).
fn secret_arg(value: String) -> Result<String, ClientError> {
    if value != "-" {
        return Ok(value);
    }
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut s)
        .map_err(|e| ClientError::Transport(format!("cannot read standard input: {e}")))?;
    Ok(s.trim().to_string())
}

async fn tool_add(a: ToolAdd) -> ExitCode {
    let entry = tool_entry(
        &a.tool_id,
        a.resource,
        [
            a.name,
            a.description,
            a.server_id,
            a.max_blast_radius,
            a.sender_constraint,
        ],
        a.require_cap,
        a.protocol,
    );
    finish(
        client(
            a.url,
            client_tls(a.toolgate_ca, a.toolgate_pin),
            a.admin_token_file,
        ),
        |c| async move { c.register_tool(&entry).await },
    )
    .await
}

async fn tool_update(u: ToolUpdate) -> ExitCode {
    if !toolgate::registry::valid_id(&u.tool_id) {
        return usage("tool id must be 1-128 characters of A-Z a-z 0-9 . _ : -");
    }
    let path = format!("/v1/tools/{}", u.tool_id);
    let entry = tool_entry(
        &u.tool_id,
        u.resource,
        [
            u.name,
            u.description,
            u.server_id,
            u.max_blast_radius,
            u.sender_constraint,
        ],
        u.require_cap,
        u.protocol,
    );
    finish(
        client(
            u.url,
            client_tls(u.toolgate_ca, u.toolgate_pin),
            u.admin_token_file,
        ),
        |c| async move {
            let body = serde_json::to_vec(&entry).unwrap_or_default();
            let (status, body) = c
                .send(http::Method::PUT, &path, Some(("application/json", body)))
                .await?;
            if status.is_success() {
                Ok(body)
            } else {
                Err(ClientError::Api { status, body })
            }
        },
    )
    .await
}

/// The JSON entry of `tool add` and `tool update`: `[name, description, server_id,
/// max_blast_radius, sender_constraint]` when given, capabilities and protocols when any.
fn tool_entry(
    tool_id: &str,
    resource: String,
    optional: [Option<String>; 5],
    caps: Vec<String>,
    protocols: Vec<String>,
) -> Value {
    let mut entry = json!({"tool_id": tool_id, "resource_uri": resource});
    if let Some(obj) = entry.as_object_mut() {
        let names = [
            "name",
            "description",
            "server_id",
            "max_blast_radius",
            "sender_constraint",
        ];
        for (k, v) in names.into_iter().zip(optional) {
            if let Some(v) = v {
                obj.insert(k.into(), json!(v));
            }
        }
        if !caps.is_empty() {
            obj.insert("required_capabilities".into(), json!(caps));
        }
        if !protocols.is_empty() {
            obj.insert("protocols".into(), json!(protocols));
        }
    }
    entry
}

async fn token_exchange(x: TokenExchange) -> ExitCode {
    let prepared = client(x.url, client_tls(x.toolgate_ca, x.toolgate_pin), None)
        .and_then(|c| Ok((c, secret_arg(x.subject_token)?)));
    let token_type = x
        .subject_token_type
        .unwrap_or_else(|| toolgate::exchange::TYPE_JWT.to_string());
    let dpop_key = match x.dpop_key.as_deref().map(dpop_key_or_new).transpose() {
        Ok(k) => k,
        Err(e) => return usage(&e),
    };
    let result = match (prepared, dpop_key) {
        (Ok((c, subject)), None) => {
            c.exchange(&subject, &token_type, &x.audience, x.scope.as_deref())
                .await
        }
        (Ok((c, subject)), Some(key)) => match c.token_endpoint().await {
            Ok(url) => {
                let proof = |nonce: Option<&str>| {
                    sign_dpop(&key, "POST", &url, None, nonce).map_err(ClientError::Transport)
                };
                c.exchange_dpop(
                    &subject,
                    &token_type,
                    &x.audience,
                    x.scope.as_deref(),
                    proof,
                )
                .await
            }
            Err(e) => Err(e),
        },
        (Err(e), _) => Err(e),
    };
    let json_out = x.json;
    report(result, |v| {
        if json_out {
            say(&pretty(&v));
        } else {
            say(v
                .get("access_token")
                .and_then(Value::as_str)
                .unwrap_or_default());
        }
    })
}

/// The DPoP key in `path`, or a new P-256 key written there (owner-only) if there is none.
fn dpop_key_or_new(path: &std::path::Path) -> Result<toolgate::jose::SigningKey, String> {
    if path.exists() {
        return dpop_key(path);
    }
    let key = toolgate::jose::SigningKey::generate()
        .map_err(|_| "cannot generate a DPoP key".to_string())?;
    toolgate::secret_file::create_private(path, toolgate::keys::to_pem(key.pkcs8()).as_bytes())
        .map_err(|e| format!("cannot write the DPoP key {}: {e}", path.display()))?;
    Ok(key)
}

/// The DPoP key in `path`: a PKCS#8 PEM private key, readable by its owner only.
fn dpop_key(path: &std::path::Path) -> Result<toolgate::jose::SigningKey, String> {
    toolgate::secret_file::ensure_private(path, "DPoP key file")?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the DPoP key {}: {e}", path.display()))?;
    toolgate::keys::from_pem(&text)
        .and_then(|der| toolgate::jose::SigningKey::from_pkcs8(&der).ok())
        .ok_or_else(|| {
            format!(
                "{} is not a PKCS#8 PEM P-256 or Ed25519 private key",
                path.display()
            )
        })
}

/// A DPoP proof by `key` for one request, dated now.
fn sign_dpop(
    key: &toolgate::jose::SigningKey,
    method: &str,
    url: &str,
    token: Option<&str>,
    nonce: Option<&str>,
) -> Result<String, String> {
    let iat = toolgate::clock::Clock::now(&toolgate::clock::SystemClock);
    toolgate::dpop::sign_proof(
        key,
        &toolgate::dpop::ProofClaims {
            htm: method,
            htu: url,
            access_token: token,
            nonce,
            iat,
        },
    )
    .map_err(|_| "cannot sign the DPoP proof".to_string())
}

fn dpop_proof(p: DpopProof) -> ExitCode {
    if toolgate::resource::normalize_http_url(&p.url).is_none() {
        return usage("--url must be an absolute http:// or https:// URL");
    }
    if p.method.is_empty() || !p.method.bytes().all(|b| b.is_ascii_uppercase()) {
        return usage("--method must be an HTTP method in capitals (GET, POST, ...)");
    }
    let token = match p.token.map(secret_arg).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("toolgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !(1..=1_000_000).contains(&p.count) {
        return usage("--count must be between 1 and 1000000");
    }
    let proofs = dpop_key(&p.key).and_then(|key| {
        let mut out = String::new();
        for _ in 0..p.count {
            out.push_str(&sign_dpop(
                &key,
                &p.method,
                &p.url,
                token.as_deref(),
                p.nonce.as_deref(),
            )?);
            out.push('\n');
        }
        Ok(out)
    });
    match proofs {
        Ok(proofs) => {
            use std::io::Write;
            let _ = std::io::stdout().lock().write_all(proofs.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("toolgate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn keys_rotate(r: KeysRotate) -> ExitCode {
    if !matches!(r.alg.as_str(), "ES256" | "EdDSA") {
        return usage("--alg must be ES256 or EdDSA");
    }
    let body = json!({ "alg": r.alg }).to_string().into_bytes();
    let json_out = r.json;
    finish(
        client(
            r.url,
            client_tls(r.toolgate_ca, r.toolgate_pin),
            r.admin_token_file,
        ),
        |c| async move {
            let (status, body) = c
                .send(
                    http::Method::POST,
                    "/v1/keys/rotate",
                    Some(("application/json", body)),
                )
                .await?;
            if !status.is_success() {
                return Err(ClientError::Api { status, body });
            }
            if json_out {
                return Ok(body);
            }
            let keys: Vec<Value> = ["previous", "key"]
                .iter()
                .filter_map(|k| body.get(*k).cloned())
                .collect();
            say(&crate::table::keys(&json!({ "keys": keys })));
            Ok(Value::Null)
        },
    )
    .await
}

async fn keys_list(l: KeysList) -> ExitCode {
    let json_out = l.json;
    finish(
        client(
            l.url,
            client_tls(l.toolgate_ca, l.toolgate_pin),
            l.admin_token_file,
        ),
        |c| async move {
            let (status, body) = c.send(http::Method::GET, "/v1/keys", None).await?;
            if !status.is_success() {
                return Err(ClientError::Api { status, body });
            }
            if json_out {
                return Ok(body);
            }
            say(&crate::table::keys(&body));
            Ok(Value::Null)
        },
    )
    .await
}

async fn verify(v: VerifyCmd) -> ExitCode {
    let tool_id = v.tool_id;
    let prepared = client(v.url, client_tls(v.toolgate_ca, v.toolgate_pin), None)
        .and_then(|c| Ok((c, secret_arg(v.token)?)));
    finish(prepared, |(c, token)| async move {
        c.verify(&token, &tool_id).await
    })
    .await
}
