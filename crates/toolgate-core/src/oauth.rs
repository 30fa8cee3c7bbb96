//! OAuth 2.0 token exchange (RFC 8693) identifiers toolgate speaks.

/// The `grant_type` of an RFC 8693 token exchange.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// A JWT subject token (RFC 8693 §3).
pub const TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// An OAuth access token as subject token.
pub const TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// An OpenID Connect ID token (the fabric's type).
pub const TYPE_OIDC: &str = "urn:starfly:token-type:oidc";
/// A toolgate agent token of an MCP agent.
pub const TYPE_AGENT_MCP: &str = "urn:starfly:token-type:agent-mcp";
/// A toolgate agent token of an A2A agent.
pub const TYPE_AGENT_A2A: &str = "urn:starfly:token-type:agent-a2a";
/// No token: the client certificate of the exchange's mutual-TLS connection, a SPIFFE
/// X.509-SVID, is the credential (the fabric's type).
pub const TYPE_MTLS: &str = "urn:starfly:token-type:mtls";
