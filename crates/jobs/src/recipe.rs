//! The recipe of a create job: the archive unpacked safely, then optionally templated.
//!
//! * [`extract`] unpacks `recipe.tar.gz` (or a plain tar; gzip is told by its magic bytes, not by
//!   the name) into an existing empty directory, in Rust, checking every member before anything is
//!   written: relative names without `..`, symbolic links that stay inside the recipe (resolved
//!   the way the kernel would, through the links extracted before them and after), hard links only
//!   to regular files extracted before, nothing but directories, files and links, no write ever
//!   through a link (every directory is opened component by component without following links,
//!   every file is created with `O_CREAT|O_EXCL|O_NOFOLLOW`), limits on sizes, member count and
//!   compression ratio counted on the bytes really read and written. Setuid/setgid bits are
//!   dropped, ownership is not restored. Any error leaves the directory empty. (The original runs
//!   `tarfile.extractall` unfiltered, so a recipe could write anywhere.)
//! * [`render_templates`] renders the files listed in `.ims_recipe_template.yaml` with the job's
//!   `template_dictionary` (Jinja2 syntax, via minijinja; an undefined variable is an error, no
//!   auto-escaping even for `.xml`, one trailing newline dropped as Jinja2 does), in place,
//!   atomically, keeping each file's mode. Includes and imports load only files inside the recipe.

mod template;
mod unpack;

pub use template::{TEMPLATE_LIST, has_template_list, render_templates};
pub use unpack::{Extracted, Limits, extract};

/// A member's name as shown in errors.
fn shown(raw: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(raw))
}

/// Splits a member name into its components: relative, no `..`, no NUL; `.` and empty
/// components (a `./` prefix, `a//b`, a trailing `/`) dropped.
fn components(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if raw.is_empty() {
        return Err("empty name");
    }
    if raw.contains(&0) {
        return Err("name contains a NUL byte");
    }
    if raw[0] == b'/' {
        return Err("absolute path");
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("leaves the recipe directory"),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}
