//! RFC 8707 resource indicators: validation and the canonical form audiences are compared in.
//!
//! Canonical means: an absolute URI (RFC 3986 `scheme ":" hier-part [ "?" query ]`), printable
//! ASCII only, no fragment, no userinfo, with the scheme and host lower-cased. Nothing else is
//! rewritten, so the comparison after canonicalisation is byte for byte (a trailing slash or a
//! percent-encoding is significant).

use std::fmt;

/// Longest resource URI accepted, in bytes.
pub const MAX_RESOURCE_LEN: usize = 2048;

/// Why a string is not an acceptable resource indicator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceError {
    Empty,
    TooLong,
    NotAscii,
    NoScheme,
    Fragment,
    UserInfo,
    NoHost,
}

impl fmt::Display for ResourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "resource URI is empty",
            Self::TooLong => "resource URI is too long",
            Self::NotAscii => "resource URI must be printable ASCII without spaces",
            Self::NoScheme => "resource URI must be an absolute URI with a scheme",
            Self::Fragment => "resource URI must not contain a fragment",
            Self::UserInfo => "resource URI must not contain userinfo",
            Self::NoHost => "resource URI has an empty host",
        })
    }
}

/// Validate `input` as an absolute URI and return its canonical form.
pub fn canonicalize(input: &str) -> Result<String, ResourceError> {
    if input.is_empty() {
        return Err(ResourceError::Empty);
    }
    if input.len() > MAX_RESOURCE_LEN {
        return Err(ResourceError::TooLong);
    }
    if !input.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ResourceError::NotAscii);
    }
    if input.contains('#') {
        return Err(ResourceError::Fragment);
    }
    let (scheme, rest) = input.split_once(':').ok_or(ResourceError::NoScheme)?;
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok || rest.is_empty() {
        return Err(ResourceError::NoScheme);
    }
    let scheme = scheme.to_ascii_lowercase();
    let Some(after) = rest.strip_prefix("//") else {
        // No authority (urn:, spiffe-less opaque forms): only the scheme is case-insensitive.
        return Ok(format!("{scheme}:{rest}"));
    };
    let end = after.find(['/', '?']).unwrap_or(after.len());
    let (authority, tail) = after.split_at(end);
    if authority.contains('@') {
        return Err(ResourceError::UserInfo);
    }
    let host = match authority.rsplit_once(':') {
        // An IPv6 literal holds colons: only a colon after the closing bracket starts a port.
        Some((h, port)) if !port.contains(']') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    if host.is_empty() && matches!(scheme.as_str(), "http" | "https" | "wss" | "ws") {
        return Err(ResourceError::NoHost);
    }
    Ok(format!(
        "{scheme}://{}{tail}",
        authority.to_ascii_lowercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowercases_scheme_and_host_only() {
        assert_eq!(
            canonicalize("HTTPS://MCP.Example.COM/Tools/Code-Search?X=Y").as_deref(),
            Ok("https://mcp.example.com/Tools/Code-Search?X=Y")
        );
        assert_eq!(
            canonicalize("https://mcp.example.com:8443/a/").as_deref(),
            Ok("https://mcp.example.com:8443/a/")
        );
        assert_eq!(
            canonicalize("URN:example:Tool").as_deref(),
            Ok("urn:example:Tool")
        );
        assert_eq!(
            canonicalize("http://[::1]:8080/x").as_deref(),
            Ok("http://[::1]:8080/x")
        );
    }

    #[test]
    fn rejects_what_is_not_an_absolute_uri() {
        assert_eq!(canonicalize(""), Err(ResourceError::Empty));
        assert_eq!(canonicalize("code-search"), Err(ResourceError::NoScheme));
        assert_eq!(canonicalize("/tools/x"), Err(ResourceError::NoScheme));
        assert_eq!(canonicalize("1http://x"), Err(ResourceError::NoScheme));
        assert_eq!(canonicalize("https:"), Err(ResourceError::NoScheme));
        assert_eq!(
            canonicalize("https://a/b#frag"),
            Err(ResourceError::Fragment)
        );
        assert_eq!(canonicalize("https://a b/"), Err(ResourceError::NotAscii));
        assert_eq!(
            canonicalize("https://exаmple.com/"),
            Err(ResourceError::NotAscii)
        );
        assert_eq!(
            canonicalize("https://user@evil/"),
            Err(ResourceError::UserInfo)
        );
        assert_eq!(canonicalize("https:///path"), Err(ResourceError::NoHost));
        let long = format!("https://a/{}", "x".repeat(MAX_RESOURCE_LEN));
        assert_eq!(canonicalize(&long), Err(ResourceError::TooLong));
    }
}
