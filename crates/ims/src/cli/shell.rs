//! `ims images shell NAME|ID [--no-jail]`: the seed's customize procedure in one command (as
//! Warewulf's `wwctl image shell`). It creates the customize job (or takes `--job`'s), waits for
//! its session, connects with the user's key and sshd's host key pinned from the API (no
//! `known_hosts` question, never `StrictHostKeyChecking=no`), hands the terminal to a shell, and
//! when the shell exits completes the job (fails it with `--fail-on-error` and a non-zero exit),
//! follows packaging and prints the new image. Ctrl-C before the shell, or a lost connection,
//! leaves the job for `ims jobs complete|fail|delete`.

use super::args::ShellArgs;
use super::{Format, Globals, by_id_or_name, client, create_record, follow_log, print, wire};
use ims_client::{Client, Resource};
use ims_core::{JobStatus, UserRequest};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// The exit code when the user interrupts the wait (128 + SIGINT, as shells report it).
const INTERRUPTED: u8 = 130;
/// The exit code when the connection to the session is lost (ssh's own).
const CONNECTION_LOST: u8 = 255;

pub fn run(a: ShellArgs, g: &Globals, format: Format) -> Result<ExitCode, String> {
    let c = client(g)?;
    let rt = super::terminal::runtime()?;
    let identity = identity(a.identity.as_deref())?;
    let quiet = super::terminal::quiet();
    let say = |m: &str| {
        if !quiet {
            eprintln!("ims: {m}");
        }
    };
    // Ctrl-C while waiting leaves the job; from here on SIGINT no longer kills this process (ssh,
    // in raw mode, passes it to the session). One listener for the whole wait, so a Ctrl-C
    // between two steps is not lost.
    let mut interrupt = {
        let _in = rt.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|e| format!("cannot handle Ctrl-C: {e}"))?
    };
    let prepared = rt.block_on(async {
        tokio::select! {
            r = prepare(&c, &a, &identity, &say) => r.map(Some),
            _ = interrupt.recv() => Ok(None),
        }
    })?;
    let Some(prepared) = prepared else {
        eprintln!("ims: interrupted before a job was created");
        return Ok(ExitCode::from(INTERRUPTED));
    };
    // Creating the job is not interrupted: once the request is sent the job may exist, and a
    // Ctrl-C meanwhile is kept by the listener for the wait below, which then names the job.
    let job_id = match prepared {
        Prepared::Job(id) => id,
        Prepared::Create { body, what } => {
            let (_, id) = rt.block_on(create_record(&c, Resource::Jobs, &body))?;
            say(&format!("job {id} {what}; Ctrl-C leaves the job"));
            id
        }
    };
    let mut offset = 0;
    let waited = rt.block_on(async {
        tokio::select! {
            r = wait_for_session(&c, &job_id, &mut offset, quiet) => r.map(Some),
            _ = interrupt.recv() => Ok(None),
        }
    })?;
    let session = match waited {
        Some(Ok(s)) => s,
        Some(Err(code)) => return Ok(code),
        None => {
            eprintln!(
                "ims: interrupted; job {job_id} is left as it is: `ims jobs complete|fail {job_id}` \
                 ends it, `ims jobs delete {job_id}` throws it away, `ims images shell --job {job_id}` \
                 connects again"
            );
            return Ok(ExitCode::from(INTERRUPTED));
        }
    };
    let known_hosts = KnownHosts::write(&session)?;
    say(&format!(
        "connecting to {}:{} (host key {} pinned from the API); exit the shell to finish",
        session.host,
        session.port,
        key_type(&session.host_key)
    ));
    let status = std::process::Command::new("ssh")
        .args(ssh_args(&session, &identity, known_hosts.path()))
        .status()
        .map_err(|e| format!("cannot run ssh (install openssh-client): {e}"))?;
    drop(known_hosts);
    let code = status.code();
    if code == Some(i32::from(CONNECTION_LOST)) || code.is_none() {
        eprintln!(
            "ims: the connection to the session was lost ({status}); job {job_id} still waits: \
             `ims images shell --job {job_id}` connects again, `ims jobs complete|fail {job_id}` \
             ends it"
        );
        return Ok(ExitCode::from(CONNECTION_LOST));
    }
    let failed = a.fail_on_error && code != Some(0);
    let what = if failed {
        UserRequest::Fail
    } else {
        UserRequest::Complete
    };
    if failed {
        say(&format!(
            "the shell exited with {status}: failing job {job_id} (--fail-on-error)"
        ));
    } else {
        say(&format!(
            "the shell exited: completing job {job_id}; packaging the new image"
        ));
    }
    rt.block_on(async {
        c.job_request(&job_id, what)
            .await
            .map_err(|e| format!("cannot {what} job {job_id}: {e}"))?;
        let mut sink: Box<dyn std::io::Write> = if quiet {
            Box::new(std::io::sink())
        } else {
            Box::new(std::io::stderr())
        };
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let ended = follow_log(&c, &job_id, offset, true, terminal, &mut sink).await?;
        let job = c
            .describe(Resource::Jobs, &job_id)
            .await
            .map_err(|e| e.to_string())?;
        if failed || ended != ExitCode::SUCCESS {
            return Err(format!(
                "job {job_id} ended in {}; no new image",
                job.get("status").and_then(Value::as_str).unwrap_or("error")
            ));
        }
        let image = job
            .get("resultant_image_id")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("job {job_id} succeeded but names no resulting image"))?;
        let image = c
            .describe(Resource::Images, image)
            .await
            .map_err(|e| e.to_string())?;
        print(&image, format)
    })
    .map(|()| ExitCode::SUCCESS)
    .or_else(|e| {
        eprintln!("Error: {e}");
        Ok(ExitCode::from(1))
    })
}

/// The private key `--identity` names, else the user's first default OpenSSH identity that has
/// its `.pub` beside it.
fn identity(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        if !p.exists() {
            return Err(format!("the identity {} does not exist", p.display()));
        }
        return Ok(p.to_path_buf());
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .ok_or("HOME is not set; name the private key with --identity")?;
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|n| home.join(".ssh").join(n))
        .find(|p| p.exists() && public_of(p).exists())
        .ok_or_else(|| {
            format!(
                "no SSH key found in {}/.ssh (id_ed25519, id_ecdsa, id_rsa with their .pub): make \
                 one with `ssh-keygen -t ed25519` or name one with --identity",
                home.display()
            )
        })
}

fn public_of(identity: &Path) -> PathBuf {
    let mut s = identity.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// The key type and blob of an OpenSSH public key line (the comment differs between copies).
fn key_material(line: &str) -> Option<(&str, &str)> {
    let mut f = line.split_ascii_whitespace();
    Some((f.next()?, f.next()?))
}

fn key_type(line: &str) -> &str {
    key_material(line).map_or("?", |(t, _)| t)
}

/// What the session is for: `--job`'s job, or the customize job to create.
enum Prepared {
    Job(String),
    Create { body: Value, what: String },
}

/// Finds (or registers) the public key record of the user's key and resolves the image into the
/// customize job to create — or takes `--job`'s.
async fn prepare(
    c: &Client,
    a: &ShellArgs,
    identity: &Path,
    say: &impl Fn(&str),
) -> Result<Prepared, String> {
    if let Some(id) = &a.job {
        return Ok(Prepared::Job(id.clone()));
    }
    let image_arg = a
        .image
        .as_deref()
        .ok_or("name the image (NAME or ID), or an existing job with --job")?;
    let image = by_id_or_name(c, Resource::Images, image_arg, async |id: &str| {
        c.describe(Resource::Images, id).await
    })
    .await?;
    let image_id = image.get("id").and_then(Value::as_str).unwrap_or_default();
    let name = a
        .name
        .clone()
        .or_else(|| {
            image
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .ok_or("the image has no name; give the new image's with --name")?;
    let key_id = match &a.public_key_id {
        Some(k) => k.clone(),
        None => public_key_record(c, identity, say).await?,
    };
    let body = json!({
        "job_type": "customize",
        "artifact_id": image_id,
        "public_key_id": key_id,
        "image_root_archive_name": name,
        "ssh_containers": [{"name": "customize", "jail": !a.no_jail}],
    });
    let what = format!(
        "customizes image {image_id} ({}) into a new image {name:?}",
        if a.no_jail { "not jailed" } else { "jailed" }
    );
    Ok(Prepared::Create { body, what })
}

/// The id of the public key record holding the user's key; registered when there is none.
async fn public_key_record(
    c: &Client,
    identity: &Path,
    say: &impl Fn(&str),
) -> Result<String, String> {
    let pub_path = public_of(identity);
    let line = std::fs::read_to_string(&pub_path).map_err(|e| {
        format!(
            "cannot read {} (the public half of {}): {e}",
            pub_path.display(),
            identity.display()
        )
    })?;
    let line = line.trim();
    let mine = key_material(line)
        .ok_or_else(|| format!("{} is not an OpenSSH public key", pub_path.display()))?;
    let all = c
        .list(Resource::PublicKeys)
        .await
        .map_err(|e| e.to_string())?;
    let found = all.as_array().into_iter().flatten().find(|k| {
        k.get("public_key")
            .and_then(Value::as_str)
            .and_then(key_material)
            == Some(mine)
    });
    if let Some(k) = found.and_then(|k| k.get("id")).and_then(Value::as_str) {
        return Ok(k.to_string());
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let (_, id) = create_record(
        c,
        Resource::PublicKeys,
        &json!({"name": format!("{user}@{host}"), "public_key": line}),
    )
    .await?;
    say(&format!(
        "registered {} as public key {id}",
        pub_path.display()
    ));
    Ok(id)
}

/// Where the session listens and the host key to pin.
struct Session {
    host: String,
    port: u16,
    host_key: String,
}

/// Follows the job (its status changes and, unless quiet, its log on stderr) until its session
/// waits on the user and the agent published sshd's host key. `Err(code)`: the job ended first.
async fn wait_for_session(
    c: &Client,
    id: &str,
    offset: &mut u64,
    quiet: bool,
) -> Result<Result<Session, ExitCode>, String> {
    use std::io::Write;
    loop {
        if let Ok((text, next, _)) = c.job_log(id, *offset).await {
            if !quiet && !text.is_empty() {
                let mut e = std::io::stderr().lock();
                let text = if std::io::IsTerminal::is_terminal(&e) {
                    super::printable(&text)
                } else {
                    text
                };
                let _ = e.write_all(&text).and_then(|()| e.flush());
            }
            *offset = next;
        }
        let job = c
            .describe(Resource::Jobs, id)
            .await
            .map_err(|e| e.to_string())?;
        match wire::<JobStatus>(&job, "status") {
            Some(JobStatus::WaitingOnUser) => {
                let s = c.job_session(id).await.map_err(|e| e.to_string())?;
                let host = s.get("host").and_then(Value::as_str);
                let port = s
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok());
                let key = s.get("host_key").and_then(Value::as_str);
                if let (Some(host), Some(port), Some(key)) = (host, port, key) {
                    ims_core::sshkey::check_public_key(key)
                        .map_err(|e| format!("the session's host key is not usable: {e}"))?;
                    return Ok(Ok(Session {
                        host: host.to_string(),
                        port,
                        host_key: key.to_string(),
                    }));
                }
            }
            Some(s) if s.is_final() => {
                eprintln!(
                    "ims: job {id} ended before its session opened; `ims jobs logs {id}` shows why"
                );
                return Ok(Err(ExitCode::from(1)));
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A private `known_hosts` with the one pinned key, removed when dropped.
struct KnownHosts(tempfile::TempDir);

impl KnownHosts {
    fn write(s: &Session) -> Result<KnownHosts, String> {
        let dir = tempfile::Builder::new()
            .prefix("ims-shell-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let host = if s.port == 22 {
            s.host.clone()
        } else {
            format!(
                "[{}]:{}",
                s.host.trim_start_matches('[').trim_end_matches(']'),
                s.port
            )
        };
        let (kind, blob) = key_material(&s.host_key).ok_or("the host key is malformed")?;
        std::fs::write(
            dir.path().join("known_hosts"),
            format!("{host} {kind} {blob}\n"),
        )
        .map_err(|e| format!("cannot write a known_hosts file: {e}"))?;
        Ok(KnownHosts(dir))
    }

    fn path(&self) -> PathBuf {
        self.0.path().join("known_hosts")
    }
}

/// The OpenSSH client's arguments: the user's key only, the pinned host key only (a different
/// key is refused, never asked about), an interactive terminal.
fn ssh_args(s: &Session, identity: &Path, known_hosts: PathBuf) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = Vec::new();
    let opt = |a: &mut Vec<std::ffi::OsString>, v: String| {
        a.push("-o".into());
        a.push(v.into());
    };
    a.push("-t".into());
    let mut kh = std::ffi::OsString::from("UserKnownHostsFile=");
    kh.push(known_hosts.as_os_str());
    a.push("-o".into());
    a.push(kh);
    opt(&mut a, "GlobalKnownHostsFile=/dev/null".into());
    opt(&mut a, "StrictHostKeyChecking=yes".into());
    opt(&mut a, "UpdateHostKeys=no".into());
    opt(
        &mut a,
        format!("HostKeyAlgorithms={}", key_type(&s.host_key)),
    );
    opt(&mut a, "IdentitiesOnly=yes".into());
    opt(&mut a, "ServerAliveInterval=15".into());
    a.push("-i".into());
    a.push(identity.into());
    a.push("-p".into());
    a.push(s.port.to_string().into());
    a.push("-l".into());
    a.push("root".into());
    a.push("--".into());
    a.push(s.host.clone().into());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_pins_the_host_key_and_never_asks() {
        let s = Session {
            host: "127.0.0.1".into(),
            port: 40022,
            host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEa ims-job".into(),
        };
        let a: Vec<String> = ssh_args(&s, Path::new("/k/id"), PathBuf::from("/t/kh"))
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let j = a.join(" ");
        for want in [
            "-o UserKnownHostsFile=/t/kh",
            "-o StrictHostKeyChecking=yes",
            "-o HostKeyAlgorithms=ssh-ed25519",
            "-i /k/id",
            "-p 40022",
            "-- 127.0.0.1",
        ] {
            assert!(j.contains(want), "{want:?} not in {j}");
        }
        assert!(!j.contains("StrictHostKeyChecking=no"), "{j}");
        let kh = KnownHosts::write(&s).unwrap();
        assert_eq!(
            std::fs::read_to_string(kh.path()).unwrap(),
            "[127.0.0.1]:40022 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEa\n"
        );
    }
}
