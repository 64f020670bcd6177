//! The client's own settings file (server URL and token): TOML at `$IMS_CLIENT_CONFIG`, else
//! `$XDG_CONFIG_HOME/ims/client.toml`, else `~/.config/ims/client.toml`. Written by
//! `ims config set`, shown by `ims config get`. Not the server's configuration (`crate::config`).

use std::io::Write;
use std::path::PathBuf;

pub const KEYS: &[&str] = &["url", "token"];

pub fn path() -> Result<PathBuf, String> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = env("IMS_CLIENT_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    if let Some(x) = env("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(x).join("ims").join("client.toml"));
    }
    match env("HOME") {
        Some(h) => Ok(PathBuf::from(h)
            .join(".config")
            .join("ims")
            .join("client.toml")),
        None => Err("cannot locate the client config file: set IMS_CLIENT_CONFIG or HOME".into()),
    }
}

/// The settings file's table (empty when there is no file).
pub fn load() -> Result<toml::Table, String> {
    let p = path()?;
    match std::fs::read_to_string(&p) {
        Ok(s) => s
            .parse::<toml::Table>()
            .map_err(|e| format!("cannot parse {}: {e}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(toml::Table::new()),
        Err(e) => Err(format!("cannot read {}: {e}", p.display())),
    }
}

/// A string setting from the file.
pub fn get(table: &toml::Table, key: &str) -> Option<String> {
    table
        .get(key)
        .and_then(toml::Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Writes the table (mode 0600: it may hold a token), creating the directory if needed.
pub fn save(table: &toml::Table) -> Result<PathBuf, String> {
    let p = path()?;
    if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let text = toml::to_string(table).map_err(|e| e.to_string())?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(0o600);
        // An existing file keeps its mode on open: tighten it first.
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("cannot set permissions of {}: {e}", p.display()))?;
        }
    }
    let mut f = opts
        .open(&p)
        .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    Ok(p)
}

/// A token shown as `****` plus its last four characters (long tokens only).
pub fn mask(token: &str) -> String {
    let n = token.chars().count();
    if n >= 12 {
        let tail: String = token.chars().skip(n - 4).collect();
        format!("****{tail}")
    } else {
        "****".into()
    }
}
