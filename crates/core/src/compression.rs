//! squashfs compression (`mksquashfs -comp`): the one list of compressor names and their levels,
//! shared by the server's configuration, the job agent's environment ([`crate::agent_env`]) and
//! `ims images import`.

use std::fmt;
use std::str::FromStr;

/// Compression of the squashfs data and metadata blocks (`mksquashfs -comp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    /// zstd: the default; close to xz in size, several times faster to build and to read.
    #[default]
    Zstd,
    /// gzip: readable by every kernel that reads squashfs.
    Gzip,
    /// xz: smallest images, slowest to build.
    Xz,
    /// lz4: fastest, largest.
    Lz4,
    /// lzo.
    Lzo,
}

/// A compression name that mksquashfs does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown squashfs compression `{0}`: use one of {names}", names = Compression::names())]
pub struct UnknownCompression(pub String);

impl Compression {
    /// All variants, in the order of the documentation.
    pub const ALL: [Compression; 5] = [Self::Zstd, Self::Gzip, Self::Xz, Self::Lz4, Self::Lzo];

    /// The name `mksquashfs -comp` takes (and that [`fmt::Display`] prints).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Gzip => "gzip",
            Self::Xz => "xz",
            Self::Lz4 => "lz4",
            Self::Lzo => "lzo",
        }
    }

    /// The names of [`Compression::ALL`], comma-separated (`zstd, gzip, xz, lz4, lzo`).
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }

    /// The levels `-Xcompression-level` takes for this compressor; `None` if it has none.
    pub fn levels(self) -> Option<std::ops::RangeInclusive<u32>> {
        match self {
            Self::Zstd => Some(1..=22),
            Self::Gzip | Self::Lzo => Some(1..=9),
            Self::Xz | Self::Lz4 => None,
        }
    }

    /// Checks that `level` is one this compressor takes; the error says which are.
    pub fn check_level(self, level: u32) -> Result<(), String> {
        match self.levels() {
            Some(r) if r.contains(&level) => Ok(()),
            Some(r) => Err(format!(
                "{self} levels are {} to {}, not {level}",
                r.start(),
                r.end()
            )),
            None => Err(format!("{self} has no compression level")),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Compression {
    type Err = UnknownCompression;

    /// Case-insensitive; accepts `zstd`, `gzip` (or `gz`), `xz`, `lz4`, `lzo`.
    fn from_str(s: &str) -> Result<Self, UnknownCompression> {
        match s.trim().to_ascii_lowercase().as_str() {
            "zstd" => Ok(Self::Zstd),
            "gzip" | "gz" => Ok(Self::Gzip),
            "xz" => Ok(Self::Xz),
            "lz4" => Ok(Self::Lz4),
            "lzo" => Ok(Self::Lzo),
            _ => Err(UnknownCompression(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error message lists exactly the names of [`Compression::ALL`].
    #[test]
    fn the_error_lists_every_name() {
        let e = "bzip2".parse::<Compression>().unwrap_err().to_string();
        assert!(
            e.ends_with(&format!("use one of {}", Compression::names())),
            "{e}"
        );
    }
}
