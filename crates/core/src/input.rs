//! Request bodies: parsing and validation of every POST/PATCH body, with the original's rules
//! (defaults, enums, `{key,value}` metadata conversion, blank checks, unknown fields → 422).

use crate::problem::Problem;
use crate::records::*;
use crate::validate::{Fields, MSG_LIST, MSG_NULL, body_object};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

fn nonblank(field: &str) -> String {
    format!("{field} field must not be blank")
}

/// Reads a nested `ArtifactLink`. Returns `Some(None)` for an allowed `null`.
fn link_field(f: &mut Fields, nullable: bool) -> Option<Option<ArtifactLink>> {
    let v = f.raw("link")?;
    match v {
        Value::Null if nullable => Some(None),
        Value::Null => {
            f.error("link", MSG_NULL);
            None
        }
        Value::Object(o) => match parse_link(o) {
            Ok(l) => Some(Some(l)),
            Err(e) => {
                f.nested_error("link", e);
                None
            }
        },
        _ => {
            f.nested_error("link", json!({"_schema": ["Invalid input type."]}));
            None
        }
    }
}

/// Validates an `ArtifactLink` object; returns the nested error map on failure.
pub fn parse_link(o: &Map<String, Value>) -> Result<ArtifactLink, Value> {
    let mut f = Fields::new(o);
    let path = f.string("path", true, Some(&nonblank("path")));
    let etag = match f.raw("etag") {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            f.error("etag", crate::validate::MSG_STRING);
            None
        }
    };
    let kind = f.one_of("type", true, LINK_TYPES, "Type");
    if let Some(e) = f.finish_nested() {
        return Err(e);
    }
    match (path, etag, kind) {
        (Some(path), Some(etag), Some(kind)) => Ok(ArtifactLink { etag, path, kind }),
        _ => Err(json!({"_schema": ["Invalid link."]})),
    }
}

/// A list of `{key, value}` string pairs (recipe `template_dictionary`); `Some(None)` for `null`.
fn template_dictionary_field(f: &mut Fields) -> Option<Option<Vec<KeyValue>>> {
    let v = f.raw("template_dictionary")?;
    let items = match v {
        Value::Null => return Some(None),
        Value::Array(a) => a,
        _ => {
            f.error("template_dictionary", MSG_LIST);
            return None;
        }
    };
    let mut out = Vec::with_capacity(items.len());
    let mut errors = Map::new();
    for (i, item) in items.iter().enumerate() {
        let Value::Object(o) = item else {
            errors.insert(i.to_string(), json!({"_schema": ["Invalid input type."]}));
            continue;
        };
        let mut g = Fields::new(o);
        let key = g.string("key", true, None);
        let value = g.string("value", true, None);
        match g.finish_nested() {
            Some(e) => {
                errors.insert(i.to_string(), e);
            }
            None => {
                if let (Some(key), Some(value)) = (key, value) {
                    out.push(KeyValue { key, value });
                }
            }
        }
    }
    if errors.is_empty() {
        Some(Some(out))
    } else {
        f.nested_error("template_dictionary", Value::Object(errors));
        None
    }
}

fn arch_field(f: &mut Fields) -> Option<String> {
    f.one_of("arch", false, ARCHES, "Arch")
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewPublicKey {
    pub name: String,
    pub public_key: String,
}

pub fn public_key_create(body: Option<&Value>) -> Result<NewPublicKey, Problem> {
    let o = body_object(body)?;
    let mut f = Fields::new(o);
    let name = f.string("name", true, Some(&nonblank("name")));
    let public_key = f.string("public_key", true, Some(&nonblank("public_key")));
    // Only a well-formed OpenSSH public key is kept (the message never repeats the input: it may
    // be a private key pasted by mistake).
    if let Some(k) = &public_key
        && !k.trim().is_empty()
        && let Err(e) = crate::sshkey::check_public_key(k)
    {
        f.error(
            "public_key",
            format!("public_key field is not an OpenSSH public key: {e}"),
        );
    }
    f.finish()?;
    Ok(NewPublicKey {
        name: name.unwrap_or_default(),
        public_key: public_key.unwrap_or_default(),
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewRecipe {
    pub name: String,
    pub recipe_type: String,
    pub linux_distribution: String,
    pub link: Option<ArtifactLink>,
    pub template_dictionary: Option<Vec<KeyValue>>,
    pub require_dkms: bool,
    pub arch: String,
}

pub fn recipe_create(body: Option<&Value>) -> Result<NewRecipe, Problem> {
    let o = body_object(body)?;
    let mut f = Fields::new(o);
    let name = f.string("name", true, Some(&nonblank("name")));
    let recipe_type = f.one_of("recipe_type", true, RECIPE_TYPES, "Recipe type");
    let linux_distribution = f.one_of(
        "linux_distribution",
        true,
        LINUX_DISTRIBUTIONS,
        "Linux distribution",
    );
    let link = link_field(&mut f, true);
    let td = template_dictionary_field(&mut f);
    let require_dkms = f.boolean("require_dkms");
    let arch = arch_field(&mut f);
    f.finish()?;
    Ok(NewRecipe {
        name: name.unwrap_or_default(),
        recipe_type: recipe_type.unwrap_or_default(),
        linux_distribution: linux_distribution.unwrap_or_default(),
        link: link.flatten(),
        template_dictionary: td.unwrap_or(Some(vec![])),
        require_dkms: require_dkms.unwrap_or(true),
        arch: arch.unwrap_or_else(|| DEFAULT_ARCH.into()),
    })
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecipePatch {
    pub link: Option<ArtifactLink>,
    pub arch: Option<String>,
    pub require_dkms: Option<bool>,
    /// `Some(None)` sets `null`.
    pub template_dictionary: Option<Option<Vec<KeyValue>>>,
}

pub fn recipe_patch(body: Option<&Value>) -> Result<RecipePatch, Problem> {
    let o = body_object(body)?;
    let mut f = Fields::new(o);
    let link = link_field(&mut f, false).flatten();
    let arch = arch_field(&mut f);
    let require_dkms = f.boolean("require_dkms");
    let template_dictionary = template_dictionary_field(&mut f);
    f.finish()?;
    Ok(RecipePatch {
        link,
        arch,
        require_dkms,
        template_dictionary,
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewImage {
    /// The id the client chose (an extension: the original refuses the field); the server picks
    /// one otherwise.
    pub id: Option<String>,
    pub name: String,
    pub link: Option<ArtifactLink>,
    pub arch: String,
    pub metadata: BTreeMap<String, String>,
}

fn string_map(o: &Map<String, Value>) -> Result<BTreeMap<String, String>, Value> {
    let mut out = BTreeMap::new();
    let mut errors = Map::new();
    for (k, v) in o {
        match v {
            Value::String(s) => {
                out.insert(k.clone(), s.clone());
            }
            _ => {
                errors.insert(k.clone(), json!({"value": ["Not a valid string."]}));
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(Value::Object(errors))
    }
}

pub fn image_create(body: Option<&Value>) -> Result<NewImage, Problem> {
    let o = body_object(body)?;
    let mut f = Fields::new(o);
    let id = f.uuid("id", false);
    let name = f.string("name", true, Some(&nonblank("name")));
    let link = link_field(&mut f, true);
    let arch = arch_field(&mut f);
    let metadata = match f.raw("metadata") {
        None => Some(BTreeMap::new()),
        // The `{key, value}` form (what `cray ims images create --metadata-key K --metadata-value V` sends).
        Some(Value::Object(m)) if m.contains_key("key") => {
            let key = m.get("key");
            let value = m.get("value");
            match (key, value) {
                (Some(Value::String(k)), None | Some(Value::Null)) => {
                    Some(BTreeMap::from([(k.clone(), String::new())]))
                }
                (Some(Value::String(k)), Some(Value::String(v))) => {
                    Some(BTreeMap::from([(k.clone(), v.clone())]))
                }
                _ => {
                    f.nested_error("metadata", json!({"key": ["Not a valid string."]}));
                    None
                }
            }
        }
        Some(Value::Object(m)) => match string_map(m) {
            Ok(m) => Some(m),
            Err(e) => {
                f.nested_error("metadata", e);
                None
            }
        },
        Some(Value::Null) => {
            f.error("metadata", MSG_NULL);
            None
        }
        Some(_) => {
            f.error("metadata", "Not a valid mapping type.");
            None
        }
    };
    f.finish()?;
    Ok(NewImage {
        id,
        name: name.unwrap_or_default(),
        link: link.flatten(),
        arch: arch.unwrap_or_else(|| DEFAULT_ARCH.into()),
        metadata: metadata.unwrap_or_default(),
    })
}

#[derive(Debug, Clone, PartialEq)]
pub enum MetadataOp {
    Set { key: String, value: String },
    Remove { key: String },
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImagePatch {
    pub link: Option<ArtifactLink>,
    pub arch: Option<String>,
    pub metadata: Option<MetadataOp>,
}

pub fn image_patch(body: Option<&Value>) -> Result<ImagePatch, Problem> {
    let o = body_object(body)?;
    let mut f = Fields::new(o);
    let link = link_field(&mut f, false).flatten();
    let arch = arch_field(&mut f);
    let metadata = match f.raw("metadata") {
        None => None,
        Some(Value::Object(m)) => {
            let mut g = Fields::new(m);
            let op = g.one_of("operation", true, &["set", "remove"], "Operation");
            let key = g.string("key", true, None);
            let value = g.string("value", false, None);
            match g.finish_nested() {
                Some(e) => {
                    f.nested_error("metadata", e);
                    None
                }
                None => match (op.as_deref(), key) {
                    (Some("set"), Some(key)) => Some(MetadataOp::Set {
                        key,
                        value: value.unwrap_or_default(),
                    }),
                    (Some("remove"), Some(key)) => Some(MetadataOp::Remove { key }),
                    _ => None,
                },
            }
        }
        Some(Value::Null) => {
            f.error("metadata", MSG_NULL);
            None
        }
        Some(_) => {
            f.nested_error("metadata", json!({"_schema": ["Invalid input type."]}));
            None
        }
    };
    f.finish()?;
    Ok(ImagePatch {
        link,
        arch,
        metadata,
    })
}

/// Why a job's boot file name cannot name a file under the image root's `/boot`, if it cannot:
/// an absolute path, a `..` segment, a NUL. (Blank names are refused by the field's own check.)
fn boot_file_name_problem(name: &str) -> Option<&'static str> {
    if name.starts_with('/') {
        Some("must name a file under the image's /boot, not an absolute path")
    } else if name.split('/').any(|seg| seg == "..") {
        Some("must name a file under the image's /boot (no `..`)")
    } else if name.contains('\0') {
        Some("must not contain NUL characters")
    } else {
        None
    }
}

/// One entry of a job's `ssh_containers` input.
#[derive(Debug, Clone, PartialEq)]
pub struct SshContainerInput {
    pub name: Option<String>,
    pub jail: bool,
}

/// A validated job POST body. Presence flags keep what the resolution rules need to know.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub job_type: String,
    pub artifact_id: String,
    pub public_key_id: String,
    pub image_root_archive_name: String,
    pub enable_debug: bool,
    pub build_env_size: Option<i64>,
    pub job_mem_size: Option<i64>,
    /// `None` or `""` → the arch default.
    pub kernel_file_name: Option<String>,
    pub initrd_file_name: String,
    pub kernel_parameters_file_name: String,
    /// `None` when absent or `null`.
    pub ssh_containers: Option<Vec<SshContainerInput>>,
    /// `None` when the client did not send it.
    pub require_dkms: Option<bool>,
}

pub fn job_create(body: Option<&Value>) -> Result<NewJob, Problem> {
    let o = body_object(body)?;
    let mut f = Fields::new(o);
    let job_type = f.one_of("job_type", true, JOB_TYPES, "Job type");
    let artifact_id = f.uuid("artifact_id", true);
    let public_key_id = f.uuid("public_key_id", true);
    let name = f.string(
        "image_root_archive_name",
        true,
        Some(&nonblank("image_root_archive_name")),
    );
    let enable_debug = f.boolean("enable_debug");
    let build_env_size = f.integer_min(
        "build_env_size",
        1,
        "build_env_size must be greater than or equal to 1",
    );
    let job_mem_size = f.integer_min(
        "job_mem_size",
        1,
        "job_mem_size must be greater than or equal to 1",
    );
    let kernel_file_name = f.string("kernel_file_name", false, None);
    let initrd = f.string(
        "initrd_file_name",
        false,
        Some(&nonblank("initrd_file_name")),
    );
    let kparams = f.string(
        "kernel_parameters_file_name",
        false,
        Some(&nonblank("kernel_parameters_file_name")),
    );
    // The boot files are looked up under the image root's /boot at packaging, after the user's
    // whole session: a name that cannot be there is refused now, not then.
    for (field, v) in [
        ("kernel_file_name", &kernel_file_name),
        ("initrd_file_name", &initrd),
        ("kernel_parameters_file_name", &kparams),
    ] {
        if let Some(v) = v
            && let Some(why) = boot_file_name_problem(v)
        {
            f.error(field, format!("{field} {why}"));
        }
    }
    let ssh_containers = match f.raw("ssh_containers") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            let mut errors = Map::new();
            for (i, item) in items.iter().enumerate() {
                let Value::Object(o) = item else {
                    errors.insert(i.to_string(), json!({"_schema": ["Invalid input type."]}));
                    continue;
                };
                let mut g = Fields::new(o);
                let name = g.string("name", false, None);
                let jail = g.boolean("jail");
                match g.finish_nested() {
                    Some(e) => {
                        errors.insert(i.to_string(), e);
                    }
                    None => out.push(SshContainerInput {
                        name,
                        jail: jail.unwrap_or(false),
                    }),
                }
            }
            if !errors.is_empty() {
                f.nested_error("ssh_containers", Value::Object(errors));
            }
            Some(out)
        }
        Some(_) => {
            f.error("ssh_containers", MSG_LIST);
            None
        }
    };
    let require_dkms = f.boolean("require_dkms");
    // Fields the server owns: named explicitly so the error says so.
    f.finish()?;
    Ok(NewJob {
        job_type: job_type.unwrap_or_default(),
        artifact_id: artifact_id.unwrap_or_default(),
        public_key_id: public_key_id.unwrap_or_default(),
        image_root_archive_name: name.unwrap_or_default(),
        enable_debug: enable_debug.unwrap_or(false),
        build_env_size,
        job_mem_size,
        kernel_file_name,
        initrd_file_name: initrd.unwrap_or_else(|| "initrd".into()),
        kernel_parameters_file_name: kparams
            .unwrap_or_else(|| DEFAULT_KERNEL_PARAMETERS_FILE_NAME.into()),
        ssh_containers,
        require_dkms,
    })
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobPatch {
    pub status: Option<String>,
    pub resultant_image_id: Option<String>,
}

pub fn job_patch(body: Option<&Value>) -> Result<JobPatch, Problem> {
    let o = body_object(body)?;
    let mut f = Fields::new(o);
    let status = f.one_of("status", false, JOB_STATUSES, "Job state");
    let resultant_image_id = f.uuid("resultant_image_id", false);
    f.finish()?;
    Ok(JobPatch {
        status,
        resultant_image_id,
    })
}

/// `{"operation": "undelete"}` on a deleted record or collection.
pub fn undelete(body: Option<&Value>) -> Result<(), Problem> {
    let o = body_object(body)?;
    let mut f = Fields::new(o);
    f.one_of("operation", true, &["undelete"], "Operation");
    f.finish()
}

pub fn remote_build_node_create(body: Option<&Value>) -> Result<RemoteBuildNode, Problem> {
    let o = body_object(body)?;
    let mut f = Fields::new(o);
    let xname = f.string("xname", true, Some(&nonblank("xname")));
    f.finish()?;
    Ok(RemoteBuildNode {
        xname: xname.unwrap_or_default(),
    })
}

/// Parses a job-collection DELETE `age` (`30m`, `6h`, `1d`, `2w`, long forms such as `2weeks`,
/// `1day`, `6hours`, `30min`, and combinations such as `1d12h`) into seconds. Unlike the original,
/// text that is not such a duration is an error instead of "age 0" (which deleted everything).
pub fn parse_age(s: &str) -> Option<i64> {
    let s = s.trim().to_ascii_lowercase();
    if s.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    let mut rest = s.as_str();
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        rest = rest[digits..].trim_start();
        let letters = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let unit = match &rest[..letters] {
            "w" | "wk" | "wks" | "week" | "weeks" => 7 * 86400,
            "d" | "day" | "days" => 86400,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            _ => return None,
        };
        rest = rest[letters..].trim_start();
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_parsing() {
        assert_eq!(parse_age("1d"), Some(86400));
        assert_eq!(parse_age("2w"), Some(14 * 86400));
        assert_eq!(parse_age("1h30m"), Some(5400));
        assert_eq!(parse_age("2weeks"), Some(14 * 86400));
        assert_eq!(parse_age("1day"), Some(86400));
        assert_eq!(parse_age("6 hours"), Some(6 * 3600));
        assert_eq!(parse_age("30min"), Some(1800));
        assert_eq!(parse_age("1D"), Some(86400));
        assert_eq!(parse_age("1x"), None);
        assert_eq!(parse_age("d"), None);
        assert_eq!(parse_age("garbage"), None);
        assert_eq!(parse_age("12"), None);
        assert_eq!(parse_age(""), None);
        assert_eq!(parse_age("99999999999999999999w"), None);
    }

    #[test]
    fn image_metadata_key_value_form() {
        let b = json!({"name": "i", "metadata": {"key": "k", "value": "v"}});
        assert_eq!(image_create(Some(&b)).unwrap().metadata["k"], "v");
        let b = json!({"name": "i", "metadata": {"a": "1"}});
        assert_eq!(image_create(Some(&b)).unwrap().metadata["a"], "1");
        let b = json!({"name": "i", "metadata": {"a": 1}});
        assert_eq!(image_create(Some(&b)).unwrap_err().status, 422);
    }

    #[test]
    fn recipe_defaults() {
        let b = json!({"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "debian12"});
        let r = recipe_create(Some(&b)).unwrap();
        assert!(r.require_dkms);
        assert_eq!(r.arch, "x86_64");
        assert_eq!(r.template_dictionary, Some(vec![]));
        let b = json!({"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "windows"});
        let e = recipe_create(Some(&b)).unwrap_err();
        assert!(e.errors.unwrap().get("linux_distribution").is_some());
    }

    #[test]
    fn link_errors_are_nested() {
        let b = json!({"name": "r", "link": {"path": "", "type": "ftp", "x": 1}});
        let e = image_create(Some(&b)).unwrap_err().errors.unwrap();
        assert!(e["link"]["path"].is_array());
        assert!(e["link"]["type"].is_array());
        assert!(e["link"]["x"].is_array());
    }
}
