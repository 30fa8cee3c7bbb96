//! Blast radius: how far a token's authority may reach, compared against a tool's maximum.
//!
//! A radius is `level[:scope]`. Levels order as
//! `function < service < namespace < cluster = workspace < trust_domain < fabric`.

/// A parsed `level[:scope]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlastRadius<'a> {
    /// The level's place in the order, `function` = 0 up to `fabric` = 5.
    pub rank: u8,
    /// What the radius is confined to (`payments` in `service:payments`); `*` in a tool's
    /// maximum means any scope.
    pub scope: Option<&'a str>,
}

fn rank(level: &str) -> Option<u8> {
    Some(match level {
        "function" => 0,
        "service" => 1,
        "namespace" => 2,
        "cluster" | "workspace" => 3,
        "trust_domain" => 4,
        "fabric" => 5,
        _ => return None,
    })
}

/// Parse `level[:scope]`; `None` for an unknown level or an empty scope.
pub fn parse(text: &str) -> Option<BlastRadius<'_>> {
    let (level, scope) = match text.split_once(':') {
        Some((l, s)) if !s.is_empty() => (l, Some(s)),
        Some(_) => return None,
        None => (text, None),
    };
    Some(BlastRadius {
        rank: rank(level)?,
        scope,
    })
}

/// Does a token with radius `token` fit under a tool's maximum `max`?
/// The token's level must not exceed the maximum's; when the maximum names a scope, the token
/// must name the same scope, unless the maximum's scope is `*`.
pub fn within(token: &str, max: &str) -> bool {
    let (Some(t), Some(m)) = (parse(token), parse(max)) else {
        return false;
    };
    if t.rank > m.rank {
        return false;
    }
    match m.scope {
        None | Some("*") => true,
        Some(s) => t.scope == Some(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_levels_and_matches_scopes() {
        assert!(within("service:payments", "namespace:*"));
        assert!(within("function", "service"));
        assert!(within("cluster:a", "workspace:a"));
        assert!(!within("fabric", "trust_domain"));
        assert!(!within("service:payments", "service:billing"));
        assert!(!within("service", "service:billing"));
        assert!(within("namespace:prod", "namespace:prod"));
        assert!(!within("galaxy", "fabric"));
        assert!(!within("service:", "fabric"));
        assert!(parse("bogus").is_none());
    }
}
