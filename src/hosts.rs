//! Which `Host` and `Origin` values a request may carry: the defence against DNS rebinding and
//! cross-site requests from a browser on the same machine.
//!
//! - `Host` must name the daemon: its listen address (any IP literal when it listens on every
//!   interface, any loopback literal when it listens on loopback), `localhost`, the issuer's
//!   host, or a name given with `--allowed-host`. The port is not compared (a reverse proxy may
//!   forward another one). A rebinding page's requests carry the attacker's name and are refused.
//! - `Origin`, when a browser sends one on a state-changing call, must be the daemon's own origin
//!   (scheme, then the request's own `Host`) or one given with `--allowed-origin`. Non-browser
//!   clients send no `Origin` and are not affected.

use std::net::{IpAddr, SocketAddr};

/// The names and origins this daemon (or gateway) answers to.
#[derive(Debug, Clone)]
pub struct Allowed {
    bound: IpAddr,
    names: Vec<String>,
    origins: Vec<String>,
}

impl Allowed {
    /// `issuer` is an absolute URL; its host is allowed. `names` and `origins` are already
    /// validated and lower-case.
    pub fn new(bound: SocketAddr, issuer: &str, names: &[String], origins: &[String]) -> Self {
        let mut all: Vec<String> = vec!["localhost".into()];
        if let Some(h) = url_host(issuer) {
            all.push(h);
        }
        all.extend(names.iter().cloned());
        Self {
            bound: bound.ip(),
            names: all,
            origins: origins.to_vec(),
        }
    }

    /// Whether a `Host` header value (`name[:port]`, `[v6][:port]`) names this daemon.
    pub fn host_ok(&self, host: &str) -> bool {
        let Some(name) = host_name(host) else {
            return false;
        };
        let literal = name.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return ip == self.bound
                || self.bound.is_unspecified()
                || (self.bound.is_loopback() && ip.is_loopback())
                || self.names.iter().any(|n| n == literal);
        }
        self.names.contains(&name)
    }

    /// Whether an `Origin` header value may make a state-changing call to a request whose
    /// (already accepted) `Host` is `host`.
    pub fn origin_ok(&self, origin: &str, host: &str) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        let host = host.trim().to_ascii_lowercase();
        if self.origins.contains(&origin) {
            return true;
        }
        let (rest, default_port) = match origin.strip_prefix("http://") {
            Some(r) => (r, "80"),
            None => match origin.strip_prefix("https://") {
                Some(r) => (r, "443"),
                None => return false,
            },
        };
        // Same origin: the page came from the very host and port this request was sent to.
        with_port(rest, default_port).is_some_and(|o| Some(o) == with_port(&host, default_port))
    }
}

/// `name:port` of an authority, with the scheme's default port filled in.
fn with_port(authority: &str, default_port: &str) -> Option<String> {
    let name = host_name(authority)?;
    let port = authority
        .get(name.len()..)
        .and_then(|p| p.strip_prefix(':'))
        .unwrap_or(default_port);
    Some(format!("{name}:{port}"))
}

/// The host part of a `Host` value, lower-case; `None` when malformed.
fn host_name(host: &str) -> Option<String> {
    let h = host.trim().to_ascii_lowercase();
    if h.is_empty() || h.contains(['/', '@', '?', '#', ' ', '\\']) {
        return None;
    }
    let name = if h.starts_with('[') {
        let end = h.find(']')?;
        let (v6, rest) = h.split_at(end + 1);
        if !(rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        v6.to_string()
    } else {
        match h.rsplit_once(':') {
            Some((n, port)) if is_port(port) && !n.contains(':') => n.to_string(),
            Some(_) => return None,
            None => h,
        }
    };
    // A trailing dot names the same host; refuse it rather than compare two spellings.
    (!name.is_empty() && !name.ends_with('.')).then_some(name)
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// The lower-case host of an absolute `http(s)://` URL.
fn url_host(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let name = host_name(authority)?;
    Some(name.trim_start_matches('[').trim_end_matches(']').into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn loopback() -> Allowed {
        Allowed::new(
            "127.0.0.1:8693".parse().unwrap(),
            "http://127.0.0.1:8693",
            &["tools.internal".into()],
            &["https://console.example.com".into()],
        )
    }

    #[test]
    fn hosts() {
        let a = loopback();
        for ok in [
            "127.0.0.1:8693",
            "127.0.0.1",
            "LOCALHOST:8693",
            "localhost",
            "[::1]:8693",
            "tools.internal:443",
        ] {
            assert!(a.host_ok(ok), "{ok}");
        }
        for bad in [
            "evil.example:8693",
            "localhost.:8693",
            "10.0.0.1:8693",
            "127.0.0.1:8693:1",
            "user@127.0.0.1",
            "",
            "[::1",
            "localhost:http",
        ] {
            assert!(!a.host_ok(bad), "{bad}");
        }
        let public = Allowed::new(
            "0.0.0.0:8693".parse().unwrap(),
            "https://toolgate.example.com",
            &[],
            &[],
        );
        assert!(public.host_ok("10.0.0.1:8693"));
        assert!(public.host_ok("toolgate.example.com"));
        assert!(!public.host_ok("rebind.attacker.example"));
    }

    #[test]
    fn origins() {
        let a = loopback();
        assert!(a.origin_ok("http://127.0.0.1:8693", "127.0.0.1:8693"));
        assert!(a.origin_ok("http://localhost", "localhost:80"));
        assert!(a.origin_ok("https://console.example.com", "127.0.0.1:8693"));
        assert!(!a.origin_ok("http://127.0.0.1:9999", "127.0.0.1:8693"));
        assert!(!a.origin_ok("null", "127.0.0.1:8693"));
        assert!(!a.origin_ok("https://evil.example", "127.0.0.1:8693"));
    }
}
