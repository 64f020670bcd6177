//! `ims remote-build-nodes host-key show|accept`: the answer of `…/host-key` printed in the chosen
//! format, a compact table for `--format table`, and on stderr what the administrator should do
//! next (compare fingerprints on the node's console, accept one; a changed key is a warning).

use super::args::Format;
use super::{print, print_lines, printable, terminal};
use serde_json::Value;
use std::process::ExitCode;

/// `--fingerprint`: `SHA256:` and the 43 base64 characters of a SHA-256 digest, as `ssh-keygen -l`
/// prints it (and as the server compares it). Checked before anything is sent.
pub fn fingerprint(f: &str) -> Result<String, String> {
    let f = f.trim();
    let ok = f.strip_prefix("SHA256:").is_some_and(|b64| {
        b64.len() == 43
            && b64
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
    });
    if ok {
        Ok(f.to_string())
    } else {
        Err(format!(
            "--fingerprint {f:?} is not a SHA256 fingerprint: give it as `ssh-keygen -l` prints it \
             on the node, SHA256: and 43 characters (nothing was sent)"
        ))
    }
}

/// One key of the answer.
struct Key {
    kind: String,
    fingerprint: String,
}

fn keys(v: &Value, field: &str) -> Vec<Key> {
    let text = |k: &Value, f: &str| clean(k.get(f).and_then(Value::as_str).unwrap_or(""));
    v.get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|k| Key {
            kind: text(k, "type"),
            fingerprint: text(k, "fingerprint"),
        })
        .collect()
}

/// Text from the server as a terminal may show it (no control characters).
fn clean(s: &str) -> String {
    String::from_utf8_lossy(&printable(s.as_bytes())).into_owned()
}

/// Prints a `…/host-key` answer; exit code 1 when the node could not be reached.
pub fn print_host_keys(v: &Value, format: Format) -> Result<ExitCode, String> {
    if format == Format::Table {
        print_lines([table(v)]);
    } else {
        print(v, format)?;
    }
    let notes = notes(v);
    if !terminal::quiet() {
        for n in &notes.lines {
            eprintln!("ims: {n}");
        }
    }
    Ok(if notes.unreachable {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A row a key: `TYPE FINGERPRINT PRESENTED ACCEPTED` (presented `unknown` when the node could
/// not be reached).
fn table(v: &Value) -> String {
    let presented = keys(v, "presented");
    let accepted = keys(v, "accepted");
    let unknown = v.get("error").is_some();
    let mut rows = vec![[
        "TYPE".to_string(),
        "FINGERPRINT".into(),
        "PRESENTED".into(),
        "ACCEPTED".into(),
    ]];
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    for k in &presented {
        let acc = accepted.iter().any(|a| a.fingerprint == k.fingerprint);
        rows.push([
            k.kind.clone(),
            k.fingerprint.clone(),
            yes_no(true),
            yes_no(acc),
        ]);
    }
    for a in &accepted {
        if !presented.iter().any(|k| k.fingerprint == a.fingerprint) {
            let shown = if unknown {
                "unknown".into()
            } else {
                yes_no(false)
            };
            rows.push([a.kind.clone(), a.fingerprint.clone(), shown, yes_no(true)]);
        }
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            line.join("  ").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

struct Notes {
    lines: Vec<String>,
    unreachable: bool,
}

/// What to tell the administrator about an answer.
fn notes(v: &Value) -> Notes {
    let xname = clean(v.get("xname").and_then(Value::as_str).unwrap_or("the node"));
    let presented = keys(v, "presented");
    let accepted = keys(v, "accepted");
    let mut lines = vec![];
    let error = v.get("error").and_then(Value::as_str);
    if let Some(e) = error {
        lines.push(format!(
            "the keys {xname} presents could not be read: {}",
            clean(e)
        ));
    }
    let is_accepted = |k: &Key| accepted.iter().any(|a| a.fingerprint == k.fingerprint);
    let new: Vec<&Key> = presented.iter().filter(|k| !is_accepted(k)).collect();
    let check = format!(
        "Compare with the node's own fingerprints, read on its console: `for k in \
         /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -lf $k; done`; then `ims remote-build-nodes \
         host-key accept {xname} --fingerprint SHA256:…`"
    );
    // A changed key of an accepted type: SSH to the node fails until it is accepted again.
    let changed: Vec<String> = new
        .iter()
        .filter_map(|k| {
            let old = accepted.iter().find(|a| a.kind == k.kind)?;
            Some(format!(
                "WARNING: {xname} presents a {} key ({}) other than the accepted one ({}): the \
                 node was reinstalled, or something else answers at its address. The server \
                 refuses to connect until the new key is accepted.",
                k.kind, k.fingerprint, old.fingerprint
            ))
        })
        .collect();
    let none_accepted = !presented.is_empty() && !presented.iter().any(is_accepted);
    if !changed.is_empty() || none_accepted {
        lines.extend(changed);
        if none_accepted {
            lines.push(format!(
                "none of the {} key(s) {xname} presents is accepted.",
                presented.len()
            ));
        }
        lines.push(check);
    }
    Notes {
        lines,
        unreachable: error.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FP_A: &str = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    const FP_B: &str = "SHA256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb+/01";
    const FP_C: &str = "SHA256:cccccccccccccccccccccccccccccccccccccccccc9";

    fn key(kind: &str, fp: &str, accepted: bool) -> Value {
        json!({"type": kind, "key": "AAAA", "fingerprint": fp, "accepted": accepted})
    }

    #[test]
    fn fingerprints_are_checked_before_sending() {
        assert_eq!(fingerprint(&format!(" {FP_B}\n")).unwrap(), FP_B);
        for bad in [
            "",
            "SHA256:",
            "sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA A",
        ] {
            let e = fingerprint(bad).unwrap_err();
            assert!(e.contains("nothing was sent"), "{bad}: {e}");
        }
    }

    #[test]
    fn table_merges_presented_and_accepted() {
        let v = json!({
            "xname": "x1",
            "presented": [key("ssh-ed25519", FP_A, true), key("ssh-rsa", FP_B, false)],
            "accepted": [key("ssh-ed25519", FP_A, true), key("ecdsa-sha2-nistp256", FP_C, true)],
        });
        let t = table(&v);
        let lines: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(
            lines,
            vec![
                vec!["TYPE", "FINGERPRINT", "PRESENTED", "ACCEPTED"],
                vec!["ssh-ed25519", FP_A, "yes", "yes"],
                vec!["ssh-rsa", FP_B, "yes", "no"],
                vec!["ecdsa-sha2-nistp256", FP_C, "no", "yes"],
            ],
            "{t}"
        );
        // Columns line up: every fingerprint starts at the same place.
        let at: Vec<usize> = t
            .lines()
            .skip(1)
            .map(|l| l.find("SHA256:").unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] == w[1]), "{t}");
    }

    #[test]
    fn unreachable_node_is_reported_and_exits_1() {
        let v = json!({
            "xname": "x1",
            "presented": [],
            "accepted": [key("ssh-ed25519", FP_A, true)],
            "error": "no host key from x1: \u{1b}[2Jgetaddrinfo failed",
        });
        let n = notes(&v);
        assert!(n.unreachable);
        assert_eq!(
            n.lines,
            vec![
                "the keys x1 presents could not be read: no host key from x1: ^[[2Jgetaddrinfo failed"
            ]
        );
        let t = table(&v);
        assert_eq!(
            t.lines()
                .nth(1)
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>(),
            vec!["ssh-ed25519", FP_A, "unknown", "yes"]
        );
    }

    #[test]
    fn new_and_changed_keys_are_pointed_out() {
        // Nothing accepted yet: compare, then accept.
        let v = json!({"xname": "x1", "presented": [key("ssh-rsa", FP_A, false),
            key("ssh-ed25519", FP_B, false)], "accepted": []});
        let n = notes(&v);
        assert!(!n.unreachable);
        assert_eq!(n.lines.len(), 2, "{:?}", n.lines);
        assert_eq!(n.lines[0], "none of the 2 key(s) x1 presents is accepted.");
        assert!(n.lines[1].starts_with("Compare with the node's own fingerprints"));
        assert!(n.lines[1].contains("host-key accept x1 --fingerprint SHA256:…"));
        // A changed key of an accepted type: a warning, although another key is still accepted.
        let v = json!({
            "xname": "x1",
            "presented": [key("ssh-ed25519", FP_B, false), key("ssh-rsa", FP_A, true)],
            "accepted": [key("ssh-ed25519", FP_C, true), key("ssh-rsa", FP_A, true)],
        });
        let n = notes(&v);
        assert_eq!(n.lines.len(), 2, "{:?}", n.lines);
        assert!(
            n.lines[0].starts_with(&format!(
                "WARNING: x1 presents a ssh-ed25519 key ({FP_B}) other than the accepted one ({FP_C})"
            )),
            "{}",
            n.lines[0]
        );
        assert!(n.lines[1].starts_with("Compare with the node's own fingerprints"));
        // One key accepted, others of other types not: nothing to do (SSH uses the accepted one).
        let v = json!({"xname": "x1", "presented": [key("ssh-rsa", FP_A, true),
            key("ssh-ed25519", FP_B, false)], "accepted": [key("ssh-rsa", FP_A, true)]});
        assert!(notes(&v).lines.is_empty());
        // Unreachable: only the error (nothing presented to compare).
        let v = json!({"xname": "x1", "presented": [], "accepted": [], "error": "down"});
        assert_eq!(
            notes(&v).lines,
            ["the keys x1 presents could not be read: down"]
        );
    }
}
