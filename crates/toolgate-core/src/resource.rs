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
    /// The empty string.
    Empty,
    /// Longer than [`MAX_RESOURCE_LEN`].
    TooLong,
    /// A byte outside printable ASCII, including a space.
    NotAscii,
    /// Not an absolute URI: no valid scheme, or nothing after it.
    NoScheme,
    /// Has a `#fragment`, which RFC 8707 §2 forbids in a resource indicator.
    Fragment,
    /// Has `user@` in its authority, which could make two spellings of one host differ.
    UserInfo,
    /// An `http`, `https`, `ws` or `wss` URI with an empty host.
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

/// The URL a DPoP proof or an execution-bound token names (`htu`), in the form RFC 9449 §4.3
/// compares: an `http`/`https` URL without query and fragment, after RFC 3986 §6.2.2
/// syntax-based normalisation (case, percent-encoding, dot segments) and §6.2.3 scheme-based
/// normalisation (default port dropped, empty path is `/`). `None` if it is not such a URL.
pub fn normalize_http_url(input: &str) -> Option<String> {
    let input = input.split('#').next()?;
    let without_query = input.split('?').next()?;
    let canonical = canonicalize(without_query).ok()?;
    let (scheme, rest) = canonical.split_once("://")?;
    let default_port = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => return None,
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let authority = authority.strip_suffix(default_port).unwrap_or(authority);
    if authority.is_empty() || authority.ends_with(':') {
        return None;
    }
    let path = normalize_percent(path)?;
    let path = remove_dot_segments(&path);
    let path = if path.is_empty() {
        "/".to_string()
    } else {
        path
    };
    Some(format!("{scheme}://{authority}{path}"))
}

/// Upper-case the hex digits of every percent-encoding and decode the unreserved characters
/// (RFC 3986 §6.2.2.1, §6.2.2.2); `None` for a `%` not followed by two hex digits.
fn normalize_percent(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let hex = path.get(i + 1..i + 3)?;
        let value = u8::from_str_radix(hex, 16).ok()?;
        if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(value));
        } else {
            out.push('%');
            out.push_str(&hex.to_ascii_uppercase());
        }
        i += 3;
    }
    Some(out)
}

/// RFC 3986 §5.2.4 on an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." | ".." => {
                if *seg == ".." {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    if out.is_empty() {
        return String::new();
    }
    let mut s = String::with_capacity(path.len());
    for seg in out {
        s.push('/');
        s.push_str(seg);
    }
    s
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

    #[test]
    fn normalizes_http_urls_as_rfc9449_compares_them() {
        let n = |u| normalize_http_url(u);
        assert_eq!(
            n("HTTPS://Server.Example.COM:443/a/./b/../c?q=1#f").as_deref(),
            Some("https://server.example.com/a/c")
        );
        assert_eq!(n("http://h:80").as_deref(), Some("http://h/"));
        assert_eq!(
            n("http://h:8080/%7euser/%2f%41").as_deref(),
            Some("http://h:8080/~user/%2FA")
        );
        assert_eq!(n("https://h/a/..").as_deref(), Some("https://h/"));
        assert_eq!(n("https://h/a/b/.").as_deref(), Some("https://h/a/b/"));
        assert_eq!(n("https://h/a/%zz"), None);
        assert_eq!(n("ftp://h/a"), None);
        assert_eq!(n("/relative"), None);
        assert_eq!(n("https://h:/x"), None);
    }
}
