//! Listing a bucket directory in S3 key order with prefix, delimiter, marker and page size.
//!
//! Keys are listed in byte order of their UTF-8 form, as S3 does. A depth-first walk gives that
//! order if siblings are sorted by their name with a `/` appended to directories (so `a-c` comes
//! before `a/b`). The walk starts at the deepest directory the prefix names, skips directories
//! that lie entirely before the marker, and rolls a directory up into one common prefix without
//! walking it when the delimiter already occurs in its path.

use std::fs;
use std::io;
use std::path::Path;

pub(crate) struct Query<'a> {
    pub prefix: &'a str,
    /// `None` or empty: no grouping.
    pub delimiter: Option<&'a str>,
    /// Only entries strictly after this (marker, start-after, continuation).
    pub after: Option<&'a str>,
    pub max: usize,
}

pub(crate) enum Entry {
    Object { key: String, md: fs::Metadata },
    Prefix(String),
}

impl Entry {
    pub fn name(&self) -> &str {
        match self {
            Entry::Object { key, .. } => key,
            Entry::Prefix(p) => p,
        }
    }
}

pub(crate) struct Page {
    pub entries: Vec<Entry>,
    pub truncated: bool,
}

struct Walker<'a> {
    q: &'a Query<'a>,
    out: Vec<Entry>,
    limit: usize,
    last_prefix: Option<String>,
}

/// Lists the bucket directory `dir`.
pub(crate) fn list(dir: &Path, q: &Query<'_>) -> io::Result<Page> {
    if q.max == 0 {
        return Ok(Page {
            entries: Vec::new(),
            truncated: false,
        });
    }
    let q_norm;
    let q = match q.delimiter {
        Some("") => {
            q_norm = Query {
                delimiter: None,
                ..*q
            };
            &q_norm
        }
        _ => q,
    };
    // Start in the directory the prefix names, if it is a plain chain of real directories.
    let (start, base) = match q.prefix.rfind('/') {
        Some(i) => {
            let rel = &q.prefix[..i];
            let plain = rel
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains('\0'));
            if !plain {
                return Ok(Page {
                    entries: Vec::new(),
                    truncated: false,
                });
            }
            let mut cur = dir.to_path_buf();
            for seg in rel.split('/') {
                cur.push(seg);
                match fs::symlink_metadata(&cur) {
                    Ok(m) if m.is_dir() => {}
                    _ => {
                        return Ok(Page {
                            entries: Vec::new(),
                            truncated: false,
                        });
                    }
                }
            }
            (cur, q.prefix[..=i].to_owned())
        }
        None => (dir.to_path_buf(), String::new()),
    };
    let mut w = Walker {
        q,
        out: Vec::new(),
        limit: q.max.saturating_add(1),
        last_prefix: None,
    };
    w.walk(&start, &base)?;
    let truncated = w.out.len() > q.max;
    w.out.truncate(q.max);
    Ok(Page {
        entries: w.out,
        truncated,
    })
}

impl Walker<'_> {
    /// The common prefix a path rolls up into, if the delimiter occurs after the prefix.
    fn common_prefix(&self, path: &str) -> Option<String> {
        let d = self.q.delimiter?;
        let rest = path.get(self.q.prefix.len()..)?;
        let i = rest.find(d)?;
        Some(path[..self.q.prefix.len() + i + d.len()].to_owned())
    }

    fn after_marker(&self, s: &str) -> bool {
        self.q.after.is_none_or(|m| s > m)
    }

    /// Adds a common prefix unless it was just added or lies before the marker; `true` when the
    /// page is full.
    fn push_prefix(&mut self, cp: String) -> bool {
        if !self.after_marker(&cp) || self.last_prefix.as_deref() == Some(cp.as_str()) {
            return false;
        }
        self.last_prefix = Some(cp.clone());
        self.out.push(Entry::Prefix(cp));
        self.out.len() >= self.limit
    }

    /// Walks `dir`, whose keys start with `base`; `true` when the page is full.
    fn walk(&mut self, dir: &Path, base: &str) -> io::Result<bool> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let mut entries = Vec::new();
        for e in rd {
            let e = match e {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                entries.push((format!("{name}/"), true, e));
            } else if ft.is_file() {
                entries.push((name, false, e));
            }
        }
        entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let prefix = self.q.prefix;
        for (sort_name, is_dir, e) in entries {
            let path = format!("{base}{sort_name}");
            if is_dir {
                if !(path.starts_with(prefix) || prefix.starts_with(&path)) {
                    continue;
                }
                // Every key below sorts before the marker.
                if let Some(m) = self.q.after
                    && path.as_str() < m
                    && !m.starts_with(&path)
                {
                    continue;
                }
                if path.starts_with(prefix)
                    && let Some(cp) = self.common_prefix(&path)
                {
                    if self.after_marker(&cp)
                        && self.last_prefix.as_deref() != Some(cp.as_str())
                        && crate::store::has_file(&e.path())?
                        && self.push_prefix(cp)
                    {
                        return Ok(true);
                    }
                    continue;
                }
                if self.walk(&e.path(), &path)? {
                    return Ok(true);
                }
            } else {
                if !path.starts_with(prefix) || !self.after_marker(&path) {
                    continue;
                }
                if let Some(cp) = self.common_prefix(&path) {
                    if self.push_prefix(cp) {
                        return Ok(true);
                    }
                    continue;
                }
                let md = match e.metadata() {
                    Ok(md) => md,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                self.out.push(Entry::Object { key: path, md });
                if self.out.len() >= self.limit {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(keys: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for k in keys {
            let p = d.path().join(k);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"x").unwrap();
        }
        fs::create_dir_all(d.path().join("empty/dir")).unwrap();
        d
    }

    fn names(
        dir: &Path,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max: usize,
    ) -> (Vec<String>, bool) {
        let q = Query {
            prefix,
            delimiter,
            after,
            max,
        };
        let p = list(dir, &q).unwrap();
        (
            p.entries.iter().map(|e| e.name().to_owned()).collect(),
            p.truncated,
        )
    }

    const KEYS: &[&str] = &["a/b", "a-c", "a/d/e", "b", "c/x/y", "c/z", "a.b", "ä"];

    #[test]
    fn order_is_byte_order() {
        let d = tree(KEYS);
        let mut want: Vec<String> = KEYS.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(names(d.path(), "", None, None, 1000).0, want);
    }

    #[test]
    fn delimiter_and_prefix() {
        let d = tree(KEYS);
        assert_eq!(
            names(d.path(), "", Some("/"), None, 1000).0,
            ["a-c", "a.b", "a/", "b", "c/", "ä"]
        );
        assert_eq!(
            names(d.path(), "a/", Some("/"), None, 1000).0,
            ["a/b", "a/d/"]
        );
        assert_eq!(names(d.path(), "c/", None, None, 1000).0, ["c/x/y", "c/z"]);
        assert_eq!(
            names(d.path(), "a", Some("/"), None, 1000).0,
            ["a-c", "a.b", "a/"]
        );
        assert_eq!(names(d.path(), "c/x/", Some("/"), None, 1000).0, ["c/x/y"]);
        assert!(
            names(d.path(), "e", Some("/"), None, 1000).0.is_empty(),
            "empty dirs are no prefix"
        );
        assert!(names(d.path(), "../", None, None, 1000).0.is_empty());
        assert!(names(d.path(), "nope/", None, None, 1000).0.is_empty());
        assert_eq!(
            names(d.path(), "", Some("-"), None, 1000).0,
            ["a-", "a.b", "a/b", "a/d/e", "b", "c/x/y", "c/z", "ä"]
        );
    }

    #[test]
    fn paging() {
        let d = tree(KEYS);
        for delim in [None, Some("/")] {
            let all = names(d.path(), "", delim, None, 1000).0;
            let mut got = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let (page, truncated) = names(d.path(), "", delim, after.as_deref(), 2);
                got.extend(page.iter().cloned());
                if !truncated {
                    break;
                }
                after = page.last().cloned();
            }
            assert_eq!(got, all, "{delim:?}");
        }
        assert_eq!(names(d.path(), "", None, Some("a/c"), 2).0, ["a/d/e", "b"]);
        assert_eq!(
            names(d.path(), "", None, Some("ö"), 2).0,
            Vec::<String>::new()
        );
        assert_eq!(names(d.path(), "", None, None, 0), (vec![], false));
    }
}
