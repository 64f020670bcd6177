//! Rendering results like cray: toml (lists as `results = [...]`), `json.dumps(indent=2)`, yaml.

use super::args::Format;
use serde_json::Value;

/// The text to print for a result (without the final newline). An empty body renders as "".
pub fn render(v: &Value, format: Format) -> Result<String, String> {
    match v {
        Value::Null => return Ok(String::new()),
        // A body that was not JSON (or a bare JSON string) is printed as its text.
        Value::String(s) => return Ok(s.clone()),
        _ => {}
    }
    let out = match format {
        Format::Json => python_json(v).map_err(|e| e.to_string())?,
        Format::Yaml => yaml_serde::to_string(v).map_err(|e| e.to_string())?,
        Format::Table => table(v),
        Format::Toml => match v {
            Value::Object(_) => toml_text(v)?,
            Value::Array(_) => toml_text(&serde_json::json!({ "results": v }))?,
            other => other.to_string(),
        },
    };
    Ok(out.trim_end_matches('\n').to_string())
}

/// The columns a list shows, in this order, when its records have them.
const COLUMNS: &[&str] = &[
    "id",
    "Key",
    "Size",
    "LastModified",
    "xname",
    // Remote build nodes' records and status.
    "nodeArch",
    "ableToRunJobs",
    "capacity",
    "reservedSlots",
    "drained",
    "hostKeyPinned",
    "name",
    "image_root_archive_name",
    "job_type",
    "status",
    "arch",
    "created",
    "deleted",
];

/// A human table: a list of records as rows (the [`COLUMNS`] its records have, else every scalar
/// field of the first), one record as `FIELD  VALUE` lines (nested values as compact JSON).
fn table(v: &Value) -> String {
    let cell = |v: Option<&Value>| match v {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let rows: Vec<Vec<String>> = match v {
        Value::Array(items) => {
            let objects: Vec<&serde_json::Map<String, Value>> =
                items.iter().filter_map(Value::as_object).collect();
            if objects.len() != items.len() {
                return items
                    .iter()
                    .map(|i| cell(Some(i)))
                    .collect::<Vec<_>>()
                    .join("\n");
            }
            let mut cols: Vec<&str> = COLUMNS
                .iter()
                .copied()
                .filter(|c| objects.iter().any(|o| o.contains_key(*c)))
                .collect();
            if cols.is_empty()
                && let Some(first) = objects.first()
            {
                cols = first
                    .iter()
                    .filter(|(_, v)| !v.is_object() && !v.is_array())
                    .map(|(k, _)| k.as_str())
                    .collect();
            }
            std::iter::once(cols.iter().map(|c| c.to_ascii_uppercase()).collect())
                .chain(
                    objects
                        .iter()
                        .map(|o| cols.iter().map(|c| cell(o.get(*c))).collect()),
                )
                .collect()
        }
        // A list under one key (`artifacts list`: `{"artifacts": [...]}`) is that list.
        Value::Object(o) if o.len() == 1 && o.values().all(Value::is_array) => {
            return o.values().map(table).collect();
        }
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| vec![k.clone(), cell(Some(v))])
            .collect(),
        other => return cell(Some(other)),
    };
    let ncols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..ncols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `json.dumps(v, indent=2)`: two-space indentation and non-ASCII characters as `\uXXXX`.
pub fn python_json(v: &Value) -> serde_json::Result<String> {
    let pretty = serde_json::to_string_pretty(v)?;
    let mut out = String::with_capacity(pretty.len());
    for c in pretty.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            // Non-ASCII characters only occur inside strings, where `\u` escapes are valid.
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    Ok(out)
}

fn toml_text(v: &Value) -> Result<String, String> {
    match to_toml(v) {
        Some(toml::Value::Table(t)) => toml::to_string(&t).map_err(|e| e.to_string()),
        _ => Ok(String::new()),
    }
}

/// JSON → TOML; `null`s (which TOML cannot express) are left out, as Python's `toml.dumps` does.
fn to_toml(v: &Value) -> Option<toml::Value> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(a) => toml::Value::Array(a.iter().filter_map(to_toml).collect()),
        Value::Object(o) => toml::Value::Table(
            o.iter()
                .filter_map(|(k, v)| to_toml(v).map(|v| (k.clone(), v)))
                .collect(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `--format yaml` (yaml_serde) prints what serde_yaml 0.9 printed before it (quoting of YAML 1.1 words,
    /// numbers-as-text, empty strings, block scalars, flow `[]`/`{}`), byte for byte.
    #[test]
    fn yaml_output_is_stable() {
        let v = json!({
            "id": "0d2f5b8a-1c3e-4f5a-9b7c-2d4e6f8a0b1c",
            "name": "yes",
            "empty": "",
            "null_word": "null",
            "tilde": "~",
            "number_text": "1.0",
            "octal_text": "0755",
            "int": 42,
            "float": 1.5,
            "neg": -3,
            "big": 18446744073709551615u64,
            "bool": true,
            "none": null,
            "colon": "a: b",
            "hash": "# not a comment",
            "lead_space": " x",
            "multi": "line one\nline two\n",
            "unicode": "ünïcødé ✓",
            "quote": "it's \"quoted\"",
            "created": "2026-01-02T03:04:05.000006+00:00",
            "list": [1, "two", {"three": [3]}, [], {}],
            "nested": {"link": {"etag": "", "path": "s3://boot-images/x/manifest.json", "type": "s3"}},
            "key with: colon": "v",
            "*star": "&amp",
        });
        let want = "'*star': '&amp'\nbig: 18446744073709551615\nbool: true\ncolon: 'a: b'\n\
                    created: 2026-01-02T03:04:05.000006+00:00\nempty: ''\nfloat: 1.5\n\
                    hash: '# not a comment'\nid: 0d2f5b8a-1c3e-4f5a-9b7c-2d4e6f8a0b1c\nint: 42\n\
                    'key with: colon': v\nlead_space: ' x'\nlist:\n- 1\n- two\n- three:\n  - 3\n\
                    - []\n- {}\nmulti: |\n  line one\n  line two\nname: yes\nneg: -3\nnested:\n\
                    \x20 link:\n    etag: ''\n    path: s3://boot-images/x/manifest.json\n\
                    \x20   type: s3\nnone: null\nnull_word: 'null'\nnumber_text: '1.0'\n\
                    octal_text: '0755'\nquote: it's \"quoted\"\ntilde: '~'\nunicode: ünïcødé ✓";
        assert_eq!(render(&v, Format::Yaml).unwrap(), want);
    }

    #[test]
    fn toml_wraps_lists_and_drops_nulls() {
        let v = json!([{"id": "a", "link": {"path": "p"}, "x": null}, {"id": "b"}]);
        let t = render(&v, Format::Toml).unwrap();
        let back: toml::Table = toml::from_str(&t).unwrap();
        let back = serde_json::to_value(back).unwrap();
        assert_eq!(
            back,
            json!({"results": [{"id": "a", "link": {"path": "p"}}, {"id": "b"}]})
        );
        assert_eq!(render(&json!([]), Format::Toml).unwrap(), "results = []");
    }

    #[test]
    fn node_tables_show_capacity_and_slots() {
        let status = json!([{"xname": "x1", "nodeArch": "x86_64", "ableToRunJobs": true,
            "capacity": 4, "reservedSlots": 1, "drained": false, "hostKeyPinned": true,
            "numCurrentJobs": 1, "podmanStatus": "x", "sshStatus": "ok", "lastError": ""}]);
        let t = render(&status, Format::Table).unwrap();
        let rows: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(
            rows,
            [
                [
                    "XNAME",
                    "NODEARCH",
                    "ABLETORUNJOBS",
                    "CAPACITY",
                    "RESERVEDSLOTS",
                    "DRAINED",
                    "HOSTKEYPINNED"
                ],
                ["x1", "x86_64", "true", "4", "1", "false", "true"]
            ]
        );
        let nodes = json!([{"xname": "x1", "capacity": 2, "drained": true}, {"xname": "x2"}]);
        let t = render(&nodes, Format::Table).unwrap();
        let rows: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(
            rows,
            [
                ["XNAME", "CAPACITY", "DRAINED"],
                ["x1", "2", "true"],
                ["x2", "-", "-"]
            ]
        );
    }

    #[test]
    fn json_is_python_like() {
        let v = json!({"b": [], "a": {"n": "é😀"}, "c": {}});
        assert_eq!(
            render(&v, Format::Json).unwrap(),
            "{\n  \"a\": {\n    \"n\": \"\\u00e9\\ud83d\\ude00\"\n  },\n  \"b\": [],\n  \"c\": {}\n}"
        );
    }

    #[test]
    fn empty_and_text_bodies() {
        for f in [Format::Toml, Format::Json, Format::Yaml] {
            assert_eq!(render(&Value::Null, f).unwrap(), "");
            assert_eq!(render(&json!("text"), f).unwrap(), "text");
        }
    }
}
