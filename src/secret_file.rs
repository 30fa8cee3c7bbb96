//! Files that hold secrets (the database with its signing key, the signing key file, the bearer
//! token files): their owner's alone, or the daemon does not use them.

use std::io::Write;
use std::path::Path;

/// `Err` with one sentence when `path` exists and any group or other permission bit is set
/// (`mode & 0o077`); `what` names the file for the operator (`--admin-token-file`,
/// `database`, …). A missing file is `Ok`: its creator makes it private.
pub fn ensure_private(path: &Path, what: &str) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = match std::fs::metadata(path) {
            Ok(meta) => meta.permissions().mode(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot inspect {what} {}: {e}", path.display())),
        };
        if mode & 0o077 != 0 {
            return Err(format!(
                "{what} {} is {} (mode {:04o}); it holds a secret and must be its owner's \
                 alone: chmod 600 it",
                path.display(),
                exposure(mode),
                mode & 0o7777
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, what);
    Ok(())
}

/// Who else may do what, in words: "readable by group, readable and writable by others",
/// "readable by group and others".
#[cfg(unix)]
fn exposure(mode: u32) -> String {
    let access = |bits: u32| {
        let words: Vec<&str> = [(4, "readable"), (2, "writable"), (1, "executable")]
            .into_iter()
            .filter(|(bit, _)| bits & bit != 0)
            .map(|(_, word)| word)
            .collect();
        match words.as_slice() {
            [] => String::new(),
            [one] => (*one).to_string(),
            [init @ .., last] => format!("{} and {last}", init.join(", ")),
        }
    };
    let (group, others) = ((mode >> 3) & 7, mode & 7);
    if group == others {
        return format!("{} by group and others", access(group));
    }
    [("group", group), ("others", others)]
        .into_iter()
        .filter(|(_, bits)| *bits != 0)
        .map(|(who, bits)| format!("{} by {who}", access(bits)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Create `path` (it must not exist) readable and writable by its owner only, write `bytes`,
/// and make both the file and its directory entry durable.
pub fn create_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn only_the_owner_may_touch_a_secret() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        assert_eq!(ensure_private(&path, "secret"), Ok(()));
        create_private(&path, b"s3cret").unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(ensure_private(&path, "secret"), Ok(()));
        assert!(create_private(&path, b"again").is_err());
        for (mode, words) in [
            (0o640, "readable by group (mode 0640)"),
            (0o604, "readable by others (mode 0604)"),
            (0o644, "readable by group and others (mode 0644)"),
            (
                0o664,
                "readable and writable by group, readable by others (mode 0664)",
            ),
            (0o660, "readable and writable by group (mode 0660)"),
            (
                0o607,
                "readable, writable and executable by others (mode 0607)",
            ),
            (0o610, "executable by group (mode 0610)"),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = ensure_private(&path, "--admin-token-file").unwrap_err();
            assert!(e.starts_with("--admin-token-file "), "{e}");
            assert!(e.contains(words), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(ensure_private(&path, "secret"), Ok(()));
    }
}
