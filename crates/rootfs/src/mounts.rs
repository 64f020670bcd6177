//! The mount table (`/proc/self/mountinfo`): which mount points lie at or under a directory.

use std::path::{Path, PathBuf};

/// A mount point as mountinfo writes it, read back: space, tab, newline and backslash are
/// `\ooo` (an octal byte); anything else stays as it is.
pub fn unescape(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The mount points at or under `dir` in a mountinfo text, in its order (a mount stacked on
/// another comes after it).
pub fn under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// [`under`] for this process's mount namespace.
pub fn mounts_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(under(
        &std::fs::read_to_string("/proc/self/mountinfo")?,
        dir,
    ))
}

/// Deepest first (the order to unmount them in); a mount point listed twice (stacked) once.
pub fn deepest_first(mut mounts: Vec<PathBuf>) -> Vec<PathBuf> {
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    mounts.dedup();
    mounts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(
            unescape(r"/a\040b/c\134d\011e\012f"),
            PathBuf::from("/a b/c\\d\te\nf")
        );
        assert_eq!(unescape(r"/x\0"), PathBuf::from(r"/x\0"));
        assert_eq!(unescape(r"/x\04"), PathBuf::from(r"/x\04"));
        assert_eq!(unescape(r"/x\777"), PathBuf::from(r"/x\777"), "not a byte");
    }

    #[test]
    fn mounts_under_a_directory_in_order() {
        let info = "22 1 0:21 / / rw - ext4 /dev/vda rw\n\
                    30 22 0:30 / /srv/j rw - tmpfs t rw\n\
                    31 30 0:31 / /srv/j/a\\040b rw - tmpfs t rw\n\
                    32 30 0:32 / /srv/jx rw - tmpfs t rw\n\
                    33 31 0:33 / /srv/j rw - tmpfs t rw\n";
        let found = under(info, Path::new("/srv/j"));
        assert_eq!(
            found,
            [
                PathBuf::from("/srv/j"),
                PathBuf::from("/srv/j/a b"),
                PathBuf::from("/srv/j")
            ]
        );
        assert_eq!(
            deepest_first(found),
            [PathBuf::from("/srv/j/a b"), PathBuf::from("/srv/j")]
        );
    }
}
