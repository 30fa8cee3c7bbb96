//! The API's bearer credentials: the admin token, and the scoped reporter and read-only tokens.
//!
//! Each is a secret of at least 16 characters, compared in constant time and never printed. One
//! read from a file follows that file: when its modification time or size changes, the next
//! check reads it again, so a token is rotated by rewriting its file, without a restart. A file
//! that becomes unreadable, too short, or readable by anyone but its owner matches nothing until
//! it is fixed (fail closed); one that is so at start is refused.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Shortest accepted secret.
pub const MIN_SECRET_LEN: usize = 16;

/// What a credential lets its bearer do (see the README's API table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// What a gateway or guard needs: read tools, keys and revocations; post decisions.
    Reporter,
    /// Every read: tools, revocations, metrics, stats, the audit log and the event stream.
    Reader,
}

impl Role {
    /// The name used in the audit log and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Reporter => "reporter",
            Role::Reader => "reader",
        }
    }
}

/// A bearer secret, fixed or followed from a file.
#[derive(Clone)]
pub struct Credential(Arc<Inner>);

struct Inner {
    file: Option<PathBuf>,
    state: Mutex<State>,
}

struct State {
    /// The SHA-256 of the current secret; `None` while the file is unusable.
    digest: Option<[u8; 32]>,
    /// The file's modification time, length and mode when it was last read.
    stamp: Option<Stamp>,
}

impl Credential {
    /// A fixed secret.
    pub fn new(secret: &str) -> Result<Self, String> {
        let digest = digest_of(secret)?;
        Ok(Self(Arc::new(Inner {
            file: None,
            state: Mutex::new(State {
                digest: Some(digest),
                stamp: None,
            }),
        })))
    }

    /// A secret read from `path` now (it must be valid and its owner's alone now) and again
    /// whenever the file changes. The error names `flag` and the path, never the content.
    pub fn from_file(path: &Path, flag: &str) -> Result<Self, String> {
        let stamp = stamp_of(path);
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))?;
        crate::secret_file::ensure_private(path, flag)?;
        let digest = digest_of(&text).map_err(|e| format!("{flag}: {e}"))?;
        Ok(Self(Arc::new(Inner {
            file: Some(path.to_path_buf()),
            state: Mutex::new(State {
                digest: Some(digest),
                stamp,
            }),
        })))
    }

    /// The file this credential follows, if any.
    pub fn file(&self) -> Option<&Path> {
        self.0.file.as_deref()
    }

    /// Constant-time comparison: both sides are hashed first, so neither the content nor the
    /// length of the secret leaks through timing.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let Some(current) = self.current() else {
            return false;
        };
        let b = ring::digest::digest(&ring::digest::SHA256, presented);
        let diff = current
            .iter()
            .zip(b.as_ref())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y));
        diff == 0 && b.as_ref().len() == current.len()
    }

    /// The current secret's digest, re-reading the file when it changed.
    fn current(&self) -> Option<[u8; 32]> {
        let mut state = self.0.state.lock().ok()?;
        if let Some(path) = &self.0.file {
            let stamp = stamp_of(path);
            if stamp.is_none() || stamp != state.stamp {
                state.stamp = stamp;
                state.digest = match std::fs::read_to_string(path)
                    .map_err(|e| e.to_string())
                    .and_then(|t| {
                        crate::secret_file::ensure_private(path, "the file")?;
                        digest_of(&t)
                    }) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        // The path is the operator's; the secret is never printed.
                        crate::log_warn!(
                            "credential file {} is unusable ({e}); it matches nothing until fixed",
                            path.display()
                        );
                        None
                    }
                };
            }
        }
        state.digest
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.file {
            Some(p) => write!(f, "Credential(<redacted>, file {})", p.display()),
            None => f.write_str("Credential(<redacted>)"),
        }
    }
}

fn digest_of(secret: &str) -> Result<[u8; 32], String> {
    let secret = secret.trim();
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "a token must be at least {MIN_SECRET_LEN} characters"
        ));
    }
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    Ok(out)
}

/// What tells a changed file: modification time, length, and (a `chmod` moves neither) mode.
fn stamp_of(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
    #[cfg(not(unix))]
    let mode = 0;
    Some((meta.modified().ok()?, meta.len(), mode))
}

type Stamp = (SystemTime, u64, u32);

/// The credentials a daemon accepts, by role.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub admin: Option<Credential>,
    pub reporter: Option<Credential>,
    pub reader: Option<Credential>,
}

impl Credentials {
    /// The role the presented bearer secret grants, if any. A secret configured for two roles
    /// grants the stronger.
    pub fn role_of(&self, presented: &[u8]) -> Option<Role> {
        [
            (Role::Admin, &self.admin),
            (Role::Reporter, &self.reporter),
            (Role::Reader, &self.reader),
        ]
        .into_iter()
        .find_map(|(role, c)| c.as_ref().filter(|c| c.matches(presented)).map(|_| role))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn compares_and_refuses_short_secrets() {
        let t = Credential::new("  correct-horse-battery-staple\n").unwrap();
        assert!(t.matches(b"correct-horse-battery-staple"));
        assert!(!t.matches(b"correct-horse-battery-stapl"));
        assert!(!t.matches(b""));
        assert!(Credential::new("short").is_err());
        assert_eq!(format!("{t:?}"), "Credential(<redacted>)");
    }

    #[test]
    fn follows_its_file_and_fails_closed() {
        let dir = std::env::temp_dir().join(format!("tg-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let _ = std::fs::remove_file(&path);
        crate::secret_file::create_private(&path, b"first-secret-0123456789").unwrap();
        let c = Credential::from_file(&path, "--reporter-token-file").unwrap();
        assert!(c.matches(b"first-secret-0123456789"));
        // A rotation changes the length (the modification time may not move within its
        // granularity, the length does).
        std::fs::write(&path, "second-secret-0123456789-rotated").unwrap();
        assert!(c.matches(b"second-secret-0123456789-rotated"));
        assert!(!c.matches(b"first-secret-0123456789"));
        std::fs::write(&path, "short").unwrap();
        assert!(!c.matches(b"short"));
        assert!(!c.matches(b"second-secret-0123456789-rotated"));
        // Readable by others: matches nothing until it is its owner's again.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&path, "third-secret-0123456789").unwrap();
            assert!(c.matches(b"third-secret-0123456789"));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(!c.matches(b"third-secret-0123456789"));
            let refused = Credential::from_file(&path, "--admin-token-file").unwrap_err();
            assert!(
                refused.contains("readable by group and others"),
                "{refused}"
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(c.matches(b"third-secret-0123456789"));
        }
        std::fs::remove_file(&path).unwrap();
        assert!(!c.matches(b"second-secret-0123456789-rotated"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn roles() {
        let creds = Credentials {
            admin: Some(Credential::new("admin-secret-0123456789").unwrap()),
            reporter: Some(Credential::new("reporter-secret-0123456789").unwrap()),
            reader: None,
        };
        assert_eq!(creds.role_of(b"admin-secret-0123456789"), Some(Role::Admin));
        assert_eq!(
            creds.role_of(b"reporter-secret-0123456789"),
            Some(Role::Reporter)
        );
        assert_eq!(creds.role_of(b"reader-secret-0123456789"), None);
    }
}
