//! Rendering a recipe's templates in place: see [`render_templates`] and the documentation of
//! [`super`].

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ims_rootfs::confined::{Dir, FileType, Root};

use super::{components, join};
use crate::error::{Context, Error, Result};

/// The file that lists the recipe's templates (relative to the recipe).
pub const TEMPLATE_LIST: &str = ".ims_recipe_template.yaml";

/// Largest template file rendered.
const MAX_TEMPLATE: u64 = 64 * 1024 * 1024;

/// Whether the recipe has a template list (`.ims_recipe_template.yaml`, in any form: a link
/// there is an error of [`render_templates`], not an absent list).
pub fn has_template_list(recipe: &Path) -> bool {
    std::fs::symlink_metadata(recipe.join(TEMPLATE_LIST)).is_ok()
}

#[derive(serde::Deserialize)]
struct TemplateListFile {
    template_files: Option<Vec<String>>,
}

/// A file inside the recipe, reached without following any link: its directory, and its name.
struct Confined {
    dir: Dir,
    name: OsString,
    /// The relative path, normalised (`a/b`).
    rel: String,
}

/// Opens the directory of `rel` inside `recipe` (relative, no `..`, no link on the way).
fn confine(recipe: &Path, rel: &str) -> Result<Confined> {
    let comps =
        components(rel.as_bytes()).map_err(|why| Error::Refused(format!("{rel:?}: {why}")))?;
    let Some((leaf, parents)) = comps.split_last() else {
        return Err(Error::Refused(format!("{rel:?}: empty name")));
    };
    let what = || format!("recipe directory {}", recipe.display());
    let root = Root::open(recipe).with_context(what)?;
    let mut cur = root.top().try_clone().with_context(what)?;
    for (i, c) in parents.iter().enumerate() {
        let name = OsStr::from_bytes(c);
        let shown_path = String::from_utf8_lossy(&join(&comps[..=i])).into_owned();
        cur = match cur.open_dir(name) {
            Ok(d) => d,
            Err(e) => {
                return Err(match cur.kind(name) {
                    Ok(Some(FileType::Symlink)) => Error::Refused(format!(
                        "{rel:?}: goes through the symbolic link {shown_path:?}"
                    )),
                    Ok(Some(_)) => {
                        Error::Refused(format!("{rel:?}: {shown_path:?} is not a directory"))
                    }
                    Ok(None) => Error::Refused(format!("{rel:?} does not exist")),
                    Err(_) => Error::Io {
                        context: format!("{rel:?}"),
                        source: e,
                    },
                });
            }
        };
    }
    Ok(Confined {
        dir: cur,
        name: OsStr::from_bytes(leaf).to_os_string(),
        rel: String::from_utf8_lossy(&join(&comps)).into_owned(),
    })
}

/// Reads a regular file inside the recipe (not a link, not through one). `Ok(None)`: absent.
fn read_confined(recipe: &Path, rel: &str) -> Result<Option<(String, u32, Confined)>> {
    let c = confine(recipe, rel)?;
    let (data, st) = match c.dir.read_regular(&c.name, MAX_TEMPLATE) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
            return Err(Error::Refused(format!(
                "{rel:?} {e}, the most a template may have"
            )));
        }
        Err(e) => {
            return match c.dir.kind(&c.name) {
                Ok(None) => Ok(None),
                Ok(Some(FileType::Symlink)) => {
                    Err(Error::Refused(format!("{rel:?} is a symbolic link")))
                }
                Ok(Some(FileType::RegularFile)) | Err(_) => Err(Error::Io {
                    context: format!("{rel:?}"),
                    source: e,
                }),
                Ok(Some(_)) => Err(Error::Refused(format!("{rel:?} is not a regular file"))),
            };
        }
    };
    let text = String::from_utf8(data)
        .map_err(|_| Error::Refused(format!("{rel:?} is not UTF-8 text")))?;
    Ok(Some((text, st.st_mode & 0o7777, c)))
}

/// Renders the files listed in the recipe's `.ims_recipe_template.yaml` in place with
/// `dictionary` (Jinja2 syntax), each replaced atomically with its mode kept; returns them.
///
/// No list: `Ok` with nothing rendered, whatever the dictionary (the caller warns when it was
/// not empty; see [`has_template_list`]). A list with an empty dictionary, a listed file outside
/// the recipe, behind a link or missing, an undefined variable, a syntax error: errors, with
/// nothing changed (every file is rendered before any is written).
pub fn render_templates(recipe: &Path, dictionary: &[(String, String)]) -> Result<Vec<PathBuf>> {
    if !has_template_list(recipe) {
        return Ok(Vec::new());
    }
    let (list, _, _) = read_confined(recipe, TEMPLATE_LIST)
        .context("recipe template list")?
        .ok_or_else(|| Error::Refused(format!("recipe template list {TEMPLATE_LIST} vanished")))?;
    if dictionary.is_empty() {
        return Err(Error::Refused(format!(
            "the recipe has a template list ({TEMPLATE_LIST}) but the recipe record has no \
             template_dictionary values"
        )));
    }
    let files: Vec<String> = if list.trim().is_empty() {
        Vec::new()
    } else {
        let parsed: TemplateListFile = yaml_serde::from_str(&list)
            .map_err(|e| Error::Refused(format!("recipe template list {TEMPLATE_LIST}: {e}")))?;
        parsed.template_files.ok_or_else(|| {
            Error::Refused(format!(
                "recipe template list {TEMPLATE_LIST}: no template_files list"
            ))
        })?
    };

    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    let base: Arc<Path> = Arc::from(recipe);
    env.set_loader(move |name: &str| match read_confined(&base, name) {
        Ok(Some((text, _, _))) => Ok(Some(text)),
        Ok(None) => Ok(None),
        Err(why) => Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("cannot load the template {why}"),
        )),
    });
    // Later pairs win, as in a Python dict built from the list.
    let values: BTreeMap<String, String> = dictionary.iter().cloned().collect();
    let ctx = minijinja::Value::from(values);

    let mut rendered = Vec::new();
    for rel in &files {
        let (_, mode, place) = read_confined(recipe, rel)
            // (Its messages start with the file's name.)
            .map_err(|e| Error::Refused(format!("recipe template {e}")))?
            .ok_or_else(|| Error::Refused(format!("recipe template {rel:?} does not exist")))?;
        let jinja = |e: minijinja::Error| {
            Error::Refused(format!("recipe template {rel:?}: {}", jinja_error(&e)))
        };
        let tmpl = env.get_template(&place.rel).map_err(jinja)?;
        let text = tmpl.render(ctx.clone()).map_err(jinja)?;
        rendered.push((place, mode, text));
    }
    let mut out = Vec::new();
    for (place, mode, text) in rendered {
        place
            .dir
            .replace_file(&place.name, text.as_bytes(), mode)
            .with_context(|| format!("recipe template {:?}: cannot write", place.rel))?;
        out.push(recipe.join(&place.rel));
    }
    Ok(out)
}

fn jinja_error(e: &minijinja::Error) -> String {
    use std::error::Error;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    // ---- templates ----

    fn recipe_with(files: &[(&str, &str, u32)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (rel, text, mode) in files {
            let p = t.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        t
    }

    fn dict(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const LIST: &str = "# comment\ntemplate_files:\n  - config.xml\n  - ./root/etc/motd\n";

    #[test]
    fn templates_rendered_in_place_with_mode_kept() {
        let r = recipe_with(&[
            (TEMPLATE_LIST, LIST, 0o644),
            (
                "config.xml",
                "<source path=\"{{ mirror }}\"/>{% include 'inc/part.xml' %}\n",
                0o640,
            ),
            ("inc/part.xml", "<p a=\"{{ mirror }}&amp;\"/>", 0o644),
            (
                "root/etc/motd",
                "{% if flavour == 'x' %}X{% endif %}{{ flavour }}{{ nope | default('-') }}\
                 {% if nope is defined %}!{% endif %}\n",
                0o755,
            ),
            ("untouched", "{{ mirror }}", 0o644),
        ]);
        assert!(has_template_list(r.path()));
        let d = dict(&[("mirror", "http://m/a?b=1&c=<2>"), ("flavour", "x")]);
        let done = render_templates(r.path(), &d).unwrap();
        assert_eq!(
            done,
            [r.path().join("config.xml"), r.path().join("root/etc/motd")]
        );
        // No HTML escaping for .xml (Jinja2's default environment has none), and one trailing
        // newline dropped as Jinja2 does.
        assert_eq!(
            std::fs::read_to_string(r.path().join("config.xml")).unwrap(),
            "<source path=\"http://m/a?b=1&c=<2>\"/><p a=\"http://m/a?b=1&c=<2>&amp;\"/>"
        );
        assert_eq!(
            std::fs::read_to_string(r.path().join("root/etc/motd")).unwrap(),
            "Xx-"
        );
        let mode = |rel: &str| {
            std::fs::metadata(r.path().join(rel))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("config.xml"), 0o640);
        assert_eq!(mode("root/etc/motd"), 0o755);
        assert_eq!(
            std::fs::read_to_string(r.path().join("untouched")).unwrap(),
            "{{ mirror }}"
        );
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(r.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".ims-"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn undefined_variable_is_an_error_and_nothing_changes() {
        let r = recipe_with(&[
            (TEMPLATE_LIST, LIST, 0o644),
            ("config.xml", "{{ mirror }}", 0o644),
            ("root/etc/motd", "{{ mirorr }}", 0o644),
        ]);
        let e = render_templates(r.path(), &dict(&[("mirror", "m")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("root/etc/motd") && e.contains("undefined"),
            "{e}"
        );
        // The first file was rendered in memory only.
        assert_eq!(
            std::fs::read_to_string(r.path().join("config.xml")).unwrap(),
            "{{ mirror }}"
        );
        let r = recipe_with(&[
            (TEMPLATE_LIST, "template_files: [a]", 0o644),
            ("a", "{% if nope %}x{% endif %}", 0o644),
        ]);
        assert!(render_templates(r.path(), &dict(&[("k", "v")])).is_err());
        let r = recipe_with(&[
            (TEMPLATE_LIST, "template_files: [a]", 0o644),
            ("a", "{% if x %}unclosed", 0o644),
        ]);
        let e = render_templates(r.path(), &dict(&[("x", "v")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"a\""), "{e}");
    }

    #[test]
    fn template_paths_confined() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s3cr3t {{ k }}").unwrap();
        let abs = outside.path().join("secret").display().to_string();
        for (list, want) in [
            (
                "template_files: ['../secret']".to_string(),
                "leaves the recipe directory",
            ),
            (format!("template_files: ['{abs}']"), "absolute path"),
            (
                "template_files: ['a/../x']".to_string(),
                "leaves the recipe directory",
            ),
            (
                "template_files: ['link/secret']".to_string(),
                "goes through the symbolic link",
            ),
            (
                "template_files: ['secret.link']".to_string(),
                "is a symbolic link",
            ),
            (
                "template_files: ['missing.xml']".to_string(),
                "does not exist",
            ),
            (
                "template_files: ['dir']".to_string(),
                "is not a regular file",
            ),
            (
                "template_files: ['x/y']".to_string(),
                "\"x\" is not a directory",
            ),
            ("template_files: ['']".to_string(), "empty name"),
            ("other_key: 1".to_string(), "no template_files list"),
            ("template_files: [a".to_string(), TEMPLATE_LIST),
        ] {
            let r = recipe_with(&[(TEMPLATE_LIST, &list, 0o644), ("x", "{{ k }}", 0o644)]);
            std::fs::create_dir(r.path().join("dir")).unwrap();
            std::os::unix::fs::symlink(outside.path(), r.path().join("link")).unwrap();
            std::os::unix::fs::symlink(outside.path().join("secret"), r.path().join("secret.link"))
                .unwrap();
            let e = render_templates(r.path(), &dict(&[("k", "v")]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{list}: {e:?} lacks {want:?}");
        }
        assert_eq!(
            std::fs::read_to_string(outside.path().join("secret")).unwrap(),
            "s3cr3t {{ k }}"
        );
    }

    #[test]
    fn template_list_itself_confined() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("list"), "template_files: [x]").unwrap();
        let r = recipe_with(&[("x", "{{ k }}", 0o644)]);
        std::os::unix::fs::symlink(outside.path().join("list"), r.path().join(TEMPLATE_LIST))
            .unwrap();
        assert!(has_template_list(r.path()));
        let e = render_templates(r.path(), &dict(&[("k", "v")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a symbolic link"), "{e}");
    }

    #[test]
    fn includes_cannot_leave_the_recipe() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, "s3cr3t").unwrap();
        let recipe_parent = tempfile::tempdir().unwrap();
        std::fs::write(recipe_parent.path().join("sibling"), "SIBLING-TEXT").unwrap();
        let recipe = recipe_parent.path().join("recipe");
        std::fs::create_dir(&recipe).unwrap();
        std::os::unix::fs::symlink(&secret, recipe.join("secret.link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), recipe.join("out")).unwrap();
        for (inc, want) in [
            ("{% include '../sibling' %}", "leaves the recipe directory"),
            (
                &format!("{{% include '{}' %}}", secret.display()) as &str,
                "absolute path",
            ),
            ("{% include 'secret.link' %}", "is a symbolic link"),
            (
                "{% include 'out/secret' %}",
                "goes through the symbolic link",
            ),
            (
                "{% import '../sibling' as m %}",
                "leaves the recipe directory",
            ),
            ("{% extends '../sibling' %}", "leaves the recipe directory"),
            ("{% include 'nope' %}", "not found"),
        ] {
            std::fs::write(recipe.join(TEMPLATE_LIST), "template_files: [t]").unwrap();
            std::fs::write(recipe.join("t"), inc).unwrap();
            let e = render_templates(&recipe, &dict(&[("k", "v")]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{inc}: {e:?} lacks {want:?}");
            assert!(!e.contains("s3cr3t") && !e.contains("SIBLING-TEXT"), "{e}");
            assert_eq!(std::fs::read_to_string(recipe.join("t")).unwrap(), inc);
        }
    }

    #[test]
    fn list_without_dictionary_is_an_error_dictionary_without_list_is_not() {
        let r = recipe_with(&[
            (TEMPLATE_LIST, LIST, 0o644),
            ("config.xml", "{{ a }}", 0o644),
        ]);
        let e = render_templates(r.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("no template_dictionary"), "{e}");
        let r = recipe_with(&[("config.xml", "{{ a }}", 0o644)]);
        assert!(!has_template_list(r.path()));
        assert_eq!(
            render_templates(r.path(), &dict(&[("a", "1")])).unwrap(),
            Vec::<PathBuf>::new()
        );
        assert_eq!(
            render_templates(r.path(), &[]).unwrap(),
            Vec::<PathBuf>::new()
        );
        assert_eq!(
            std::fs::read_to_string(r.path().join("config.xml")).unwrap(),
            "{{ a }}"
        );
    }
}
