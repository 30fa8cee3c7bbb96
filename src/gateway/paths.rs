//! Which request paths the gateway decides on, and which `--route` a path falls under. Pure, so
//! the fuzz target and unit tests run it without a server.
//!
//! A path is decided only in its canonical spelling: one byte sequence per path, so that no
//! upstream (or proxy in front of it) can read it as another one — dot segments, `;` path
//! parameters, empty segments, backslashes and percent escapes that decode to something the
//! raw path could have said are all refused. Routes then match on that one spelling.

/// Why a path is not decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not an absolute path (`/…`).
    NotAbsolute,
    /// A `;`: path parameters that some upstreams strip (`/a/..;/b`).
    Parameter,
    /// A `.` or `..` segment.
    DotSegment,
    /// `//`: an empty segment that upstreams merge.
    EmptySegment,
    /// A backslash, raw or escaped: a separator to some upstreams.
    Backslash,
    /// A `%` escape that is malformed, lower-case, or decodes to a byte the raw path can carry
    /// (unreserved, sub-delimiters, `:`, `@`), to `/`, `%` or a control character.
    Escape,
    /// A byte that must be percent-escaped.
    Unescaped,
}

impl PathError {
    /// The `error_description` of the `400 invalid_request` answer.
    pub fn description(self) -> &'static str {
        match self {
            Self::NotAbsolute => "the path must start with /",
            Self::Parameter => "; (path parameters) is not accepted in paths",
            Self::DotSegment => "dot segments are not accepted in paths",
            Self::EmptySegment => "empty path segments (//) are not accepted",
            Self::Backslash => "backslashes are not accepted in paths",
            Self::Escape => {
                "percent escapes must be upper-case and only of bytes a path cannot carry raw (never /, %, control characters or unreserved characters)"
            }
            Self::Unescaped => "the path has a character that must be percent-escaped",
        }
    }
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.description())
    }
}

impl std::error::Error for PathError {}

/// A byte a path segment may carry raw (RFC 3986 `pchar` without `%`), `;` aside.
pub fn raw_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `Ok` when `path` is canonical (see the module documentation); a trailing `/` is allowed.
pub fn canonical(path: &str) -> Result<(), PathError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    let bytes = path.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'/' => {}
            b';' => return Err(PathError::Parameter),
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let decoded = match (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => h * 16 + l,
                    _ => return Err(PathError::Escape),
                };
                if decoded == b'\\' {
                    return Err(PathError::Backslash);
                }
                if decoded == b';' {
                    return Err(PathError::Parameter);
                }
                if raw_path_byte(decoded) || matches!(decoded, b'/' | b'%' | 0x7f) || decoded < 0x20
                {
                    return Err(PathError::Escape);
                }
                i += 2;
            }
            b if raw_path_byte(b) => {}
            _ => return Err(PathError::Unescaped),
        }
        i += 1;
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            "." | ".." => return Err(PathError::DotSegment),
            "" if n != last => return Err(PathError::EmptySegment),
            _ => {}
        }
    }
    Ok(())
}

/// A route prefix without its trailing `/` (the root route is the empty string).
fn trimmed(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

/// Whether `path` is `prefix` or below it (on a segment boundary: `/api` covers `/api/x`, not
/// `/apix`).
pub fn under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(trimmed(prefix)) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The tool of the longest route prefix `path` is under, if any (`/api=a` does not hide
/// `/api/admin=b`).
pub fn route<'a>(routes: &'a [(String, String)], path: &str) -> Option<&'a str> {
    routes
        .iter()
        .filter(|(prefix, _)| under(path, prefix))
        .max_by_key(|(prefix, _)| trimmed(prefix).len())
        .map(|(_, tool)| tool.as_str())
}

/// Check a route table at start: every prefix canonical, no prefix twice (`/api` and `/api/`
/// are the same prefix).
pub fn check_routes(routes: &[(String, String)]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for (prefix, _) in routes {
        canonical(prefix).map_err(|e| format!("--route prefix {prefix}: {e}"))?;
        if !seen.insert(trimmed(prefix)) {
            return Err(format!("--route prefix {prefix} is given twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn canonical_paths_pass() {
        for p in [
            "/",
            "/mcp",
            "/mcp/",
            "/api/search/q",
            "/a/b.c/..d/.e/~x",
            "/a:b@c!$&'()*+,=",
            "/caf%C3%A9",
            "/a%20b%3F%23%7B",
        ] {
            assert_eq!(canonical(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn non_canonical_paths_are_refused() {
        use PathError::*;
        for (p, why) in [
            ("", NotAbsolute),
            ("mcp", NotAbsolute),
            ("/api/tool-a/..;/tool-b", Parameter),
            ("/api;x=1", Parameter),
            ("/api/%3B", Parameter),
            ("/api/..", DotSegment),
            ("/api/./x", DotSegment),
            ("/./", DotSegment),
            ("/api//x", EmptySegment),
            ("//api", EmptySegment),
            ("/api\\x", Backslash),
            ("/api%5Cx", Backslash),
            ("/api%5cx", Escape),
            ("/api/%2e%2e/x", Escape),
            ("/api/%2E%2E/x", Escape),
            ("/api%2Fx", Escape),
            ("/%61pi", Escape),
            ("/api%2561", Escape),
            ("/api%00", Escape),
            ("/api%7F", Escape),
            ("/api%21", Escape),
            ("/api%c3%a9", Escape),
            ("/api%", Escape),
            ("/api%4", Escape),
            ("/api%G0", Escape),
            ("/a{b}", Unescaped),
            ("/a b", Unescaped),
            ("/a\"b", Unescaped),
            ("/caf\u{e9}", Unescaped),
        ] {
            assert_eq!(canonical(p), Err(why), "{p}");
        }
    }

    #[test]
    fn the_longest_prefix_wins() {
        let routes: Vec<(String, String)> = [
            ("/api", "a"),
            ("/api/admin/", "b"),
            ("/", "root"),
            ("/api/adminx", "c"),
        ]
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect();
        for (path, tool) in [
            ("/api", "a"),
            ("/api/", "a"),
            ("/api/x", "a"),
            ("/api/admin", "b"),
            ("/api/admin/users", "b"),
            ("/api/administrator", "a"),
            ("/api/adminx/y", "c"),
            ("/apix", "root"),
            ("/", "root"),
        ] {
            assert_eq!(route(&routes, path), Some(tool), "{path}");
        }
        let no_root = routes.get(..2).unwrap_or_default();
        assert_eq!(route(no_root, "/apix"), None);
        assert_eq!(route(no_root, "/ap"), None);
    }

    #[test]
    fn the_fuzz_oracle_holds_on_the_seed_corpus() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/gateway_path");
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            crate::fuzzing::gateway_path(&std::fs::read(entry.unwrap().path()).unwrap());
            seeds += 1;
        }
        assert!(seeds >= 3);
        for extra in ["/a/%C3%A9/b/\n/a\n/a/%C3%A9", "/\n/", "/x%7B%20y\n/x%7B"] {
            crate::fuzzing::gateway_path(extra.as_bytes());
        }
    }

    #[test]
    fn route_tables_are_checked() {
        let t = |p: &[&str]| -> Vec<(String, String)> {
            p.iter().map(|p| (p.to_string(), "t".to_string())).collect()
        };
        assert!(check_routes(&t(&["/api", "/api/admin", "/"])).is_ok());
        assert!(check_routes(&t(&["/api", "/api/"])).is_err());
        assert!(check_routes(&t(&["/api;x"])).is_err());
        assert!(check_routes(&t(&["/api/../x"])).is_err());
        assert!(check_routes(&t(&["api"])).is_err());
    }
}
