//! The client CLI, shaped like `cray ims …` (`shared/reference/clients.md` §4): the same commands,
//! verbs, option names and request bodies; results on stdout in toml (default), json or yaml;
//! errors on stderr as `Error: <title>: <detail>` with exit code 2.
//!
//! Arguments are turned into a [`Request`] first (all client-side checks happen there, before any
//! connection), then sent with [`ims_client::Client`].

mod args;
mod artifacts;
pub(crate) mod examples;
mod import;
mod nodes;
mod output;
mod settings;
mod shell;
mod terminal;

pub use args::{Command, Format, Globals};

use args::*;
use ims_client::{Client, Resource};
use ims_core::{JobStatus, SshStatus, UserRequest};
use serde_json::{Map, Value, json};
use std::io::Write;
use std::process::ExitCode;

/// One API call, fully checked.
#[derive(Debug, PartialEq)]
enum Request {
    List(Resource),
    Describe(Resource, String),
    Create(Resource, Value),
    /// `None`: PATCH with no body, as cray sends when no option is given.
    Update(Resource, String, Option<Value>),
    Delete(Resource, String),
    /// With the filters; `true`: confirmed (`--yes`), else asked on a terminal.
    DeleteAll(Resource, Vec<(&'static str, String)>, bool),
    Version,
    /// A remote build node's host keys (extension).
    HostKeys(String),
    /// Accept the host key with this fingerprint (extension).
    AcceptHostKey(String, String),
}

/// Runs a client command and returns the process's exit code (0, or 2 on any error).
pub fn run(cmd: Command, globals: Globals) -> ExitCode {
    let format = globals.format.unwrap_or_default();
    if globals.quiet {
        terminal::set_quiet();
    }
    let result = match cmd {
        Command::Config { op } => config(op, format).map(|()| ExitCode::SUCCESS),
        Command::Artifacts { verb } => artifacts::run(verb, &globals, format),
        Command::Images {
            verb: ImagesVerb::Verify(i),
        } => artifacts::verify(&i.id, &globals, format),
        Command::Images {
            verb: ImagesVerb::Import(args),
        } => import::run(args, &globals, format),
        Command::Images {
            verb: ImagesVerb::Shell(args),
        } => shell::run(args, &globals, format),
        Command::Jobs {
            verb: JobsVerb::Logs { id, follow },
        } => job_logs(&id, follow, &globals),
        Command::Jobs {
            verb: JobsVerb::Complete(i),
        } => job_request(&i.id, UserRequest::Complete, &globals, format),
        Command::Jobs {
            verb: JobsVerb::Fail(i),
        } => job_request(&i.id, UserRequest::Fail, &globals, format),
        Command::Recipes {
            verb:
                RecipesVerb::Import {
                    name,
                    source,
                    recipe_type,
                    linux_distribution,
                    arch,
                    require_dkms,
                    template,
                },
        } => template_dictionary(template).and_then(|t| {
            let mut o = Map::new();
            o.insert("recipe_type".into(), recipe_type.into());
            o.insert("linux_distribution".into(), linux_distribution.into());
            o.insert("name".into(), name.into());
            put(&mut o, "arch", arch);
            put(&mut o, "require_dkms", require_dkms);
            put(&mut o, "template_dictionary", t);
            artifacts::import_recipe(Value::Object(o), &source, &globals, format)
        }),
        cmd => {
            let wait = matches!(
                &cmd,
                Command::Jobs {
                    verb: JobsVerb::Create { wait: true, .. }
                }
            );
            match request(cmd) {
                Ok(Request::Create(Resource::Jobs, body)) if wait => {
                    create_job_and_wait(&body, &globals, format)
                }
                Ok(Request::Create(Resource::Jobs, body)) => create_job(&body, &globals, format),
                Ok(req) => send(req, &globals, format),
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("Error: {msg}");
            ExitCode::from(2)
        }
    }
}

fn client(g: &Globals) -> Result<Client, String> {
    let (url, token) = connection(g)?;
    make_client(&url, token, g)
}

/// A client honouring `-v` (every request traced on stderr).
fn make_client(url: &str, token: Option<String>, g: &Globals) -> Result<Client, String> {
    let c = Client::new(url, token).map_err(|e| e.to_string())?;
    Ok(if g.verbose > 0 { c.traced(trace) } else { c })
}

/// `-v`: cray prints these on stdout, mixed into the results; here they go to stderr.
fn trace(method: &reqwest::Method, url: &reqwest::Url) {
    eprintln!("REQUEST: {method} to {url}");
}

/// `ims jobs complete|fail ID`: prints the job.
fn job_request(
    id: &str,
    what: UserRequest,
    g: &Globals,
    format: Format,
) -> Result<ExitCode, String> {
    let c = client(g)?;
    let v = terminal::runtime()?
        .block_on(c.job_request(id, what))
        .map_err(|e| e.to_string())?;
    print(&v, format)?;
    Ok(ExitCode::SUCCESS)
}

/// How long `ims jobs logs --follow` keeps retrying while the server does not answer (a restart,
/// an upgrade) before it gives up.
const FOLLOW_OUTAGE_LIMIT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// `ims jobs logs ID [--follow]`: the agent's log on stdout, as it arrives. With `--follow` a
/// server that stops answering (restarted, upgraded) is waited for and the log goes on where it
/// was; the exit code is 1 when the job ended in `error`.
fn job_logs(id: &str, follow: bool, g: &Globals) -> Result<ExitCode, String> {
    let c = client(g)?;
    use std::io::IsTerminal;
    let terminal = std::io::stdout().is_terminal();
    terminal::runtime()?.block_on(follow_log(
        &c,
        id,
        0,
        follow,
        terminal,
        &mut std::io::stdout(),
    ))
}

/// A record's field holding one of a wire enum's values (job or SSH status), as the enum; `None`
/// when it is absent or not one of them.
pub(crate) fn wire<T: std::str::FromStr>(record: &Value, field: &str) -> Option<T> {
    record.get(field)?.as_str()?.parse().ok()
}

/// A job's log as a terminal may show it: the log carries what builds and package scripts wrote,
/// so control characters (escape sequences that could move the cursor, retitle the window or
/// worse) are shown as `^X` instead of being sent; newlines and tabs stay.
pub(crate) fn printable(text: &[u8]) -> Vec<u8> {
    let mut out = String::with_capacity(text.len());
    for c in String::from_utf8_lossy(text).chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push('^');
                out.push(char::from((c as u8) ^ 0x40));
            }
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out.into_bytes()
}

/// Copies job `id`'s log from byte `offset` to `out` as it arrives (through [`printable`] when
/// `out` is a terminal); with `follow` until the job is over (riding out a server that stops
/// answering for a while), exit code 1 when it ended in `error`. A closed `out` (`| head`) stops
/// quietly.
pub(crate) async fn follow_log(
    c: &Client,
    id: &str,
    mut offset: u64,
    follow: bool,
    terminal: bool,
    out: &mut dyn std::io::Write,
) -> Result<ExitCode, String> {
    let mut outage: Option<std::time::Instant> = None;
    loop {
        let (text, next, done) = match c.job_log(id, offset).await {
            Ok(r) => r,
            Err(e) if follow && retryable(&e) => {
                let since = *outage.get_or_insert_with(|| {
                    eprintln!("ims: {e}; still following, retrying");
                    std::time::Instant::now()
                });
                if since.elapsed() > FOLLOW_OUTAGE_LIMIT {
                    return Err(format!(
                        "{e} (gave up after {} s without an answer)",
                        FOLLOW_OUTAGE_LIMIT.as_secs()
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        if outage.take().is_some() {
            eprintln!("ims: the server answers again; following on");
        }
        let text = if terminal { printable(&text) } else { text };
        if !text.is_empty() && out.write_all(&text).and_then(|()| out.flush()).is_err() {
            return Ok(ExitCode::SUCCESS);
        }
        let more = next > offset;
        offset = next;
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        if done {
            let job = c
                .describe(Resource::Jobs, id)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(
                if wire::<JobStatus>(&job, "status") == Some(JobStatus::Error) {
                    eprintln!("ims: job {id} ended in error");
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                },
            );
        }
        if !more {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}

/// `ims jobs create` (without `--wait`): the new job. Its session's address is not known yet
/// (the containers are `pending`; the executor fills in the real address and port when the
/// session listens), so the human formats leave those placeholders out and say where the real
/// ones will be; `--format json` keeps the record as the server sent it, as `cray` prints it.
fn create_job(body: &Value, g: &Globals, format: Format) -> Result<ExitCode, String> {
    let c = client(g)?;
    let (mut job, id) = terminal::runtime()?.block_on(create_record(&c, Resource::Jobs, body))?;
    let mut pending = false;
    if let Some(containers) = job.get_mut("ssh_containers").and_then(Value::as_array_mut) {
        for ct in containers {
            if wire::<SshStatus>(ct, "status") == Some(SshStatus::Pending) {
                pending = true;
                if format != Format::Json
                    && let Some(o) = ct.as_object_mut()
                {
                    o.remove("connection_info");
                }
            }
        }
    }
    print(&job, format)?;
    if pending && !terminal::quiet() {
        eprintln!(
            "ims: the session's address and port are known once the job waits on its user: \
             `ims jobs describe {id}` then, or `ims jobs create … --wait` next time"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `ims jobs create … --wait`: creates the job, then follows its status (changes on stderr) until
/// it waits on its user — its session's address and port are then the real ones — or ends; prints
/// the job then. Exit 1 when it ended in `error`.
fn create_job_and_wait(body: &Value, g: &Globals, format: Format) -> Result<ExitCode, String> {
    let c = client(g)?;
    let job = terminal::runtime()?.block_on(async {
        let (_, id) = create_record(&c, Resource::Jobs, body).await?;
        let mut shown = String::new();
        loop {
            let job = c
                .describe(Resource::Jobs, &id)
                .await
                .map_err(|e| e.to_string())?;
            let status = job
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if status != shown && !terminal::quiet() {
                eprintln!("job {id}: {status}");
                shown.clone_from(&status);
            }
            if wire::<JobStatus>(&job, "status")
                .is_some_and(|s| s == JobStatus::WaitingOnUser || s.is_final())
            {
                return Ok::<Value, String>(job);
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    })?;
    print(&job, format)?;
    Ok(
        if wire::<JobStatus>(&job, "status") == Some(JobStatus::Error) {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        },
    )
}

/// Creates a record; the server's answer and the new record's id.
async fn create_record(c: &Client, r: Resource, body: &Value) -> Result<(Value, String), String> {
    let v = c.create(r, body).await.map_err(|e| e.to_string())?;
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("the server's answer has no {} id: {v}", kind_of(r).0))?
        .to_string();
    Ok((v, id))
}

/// A failure that a server restart explains: no connection, a broken one, or a gateway's or
/// stopping server's 502/503/504.
fn retryable(e: &ims_client::Error) -> bool {
    match e {
        ims_client::Error::Connect { .. } | ims_client::Error::Transport { .. } => true,
        ims_client::Error::Api { status, .. } => matches!(status, 502..=504),
        ims_client::Error::InvalidUrl { .. } | ims_client::Error::Decode { .. } => false,
    }
}

/// The S3 side (STS credentials) of the configured server.
async fn s3_ctx(g: &Globals) -> Result<ims_client::s3::Ctx, String> {
    let (url, token) = connection(g)?;
    Ok(
        ims_client::s3::Ctx::with_client(&url, make_client(&url, token, g)?)
            .await?
            .with_progress(std::sync::Arc::new(terminal::Bars)),
    )
}

/// `--token`: as cray's, a file holding the token (plain, or the JSON `cray auth login` writes,
/// with `access_token`); a value that names no file is the token itself.
fn token_argument(v: &str) -> Result<String, String> {
    let p = std::path::Path::new(v);
    if !p.is_file() {
        return Ok(v.to_string());
    }
    let text =
        std::fs::read_to_string(p).map_err(|e| format!("cannot read the token file {v}: {e}"))?;
    let token = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(o)) => o
            .get("access_token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("the token file {v} has no access_token"))?,
        _ => text.trim().to_string(),
    };
    if token.is_empty() {
        return Err(format!("the token file {v} is empty"));
    }
    Ok(token)
}

/// Prints a result on stdout (a closed pipe is not an error worth reporting).
pub(crate) fn print(v: &Value, format: Format) -> Result<(), String> {
    let text = output::render(v, format)?;
    print_lines([text]);
    Ok(())
}

/// Prints lines on stdout. A closed stdout (`| head -0`, a reader that went away) is the end of
/// the output, not an error: the work is done, so the rest is dropped silently (never a panic, as
/// `println!` does on a broken pipe).
pub(crate) fn print_lines<T: std::fmt::Display>(lines: impl IntoIterator<Item = T>) {
    let mut out = std::io::stdout().lock();
    for line in lines {
        if writeln!(out, "{line}").is_err() {
            return;
        }
    }
    let _ = out.flush();
}

/// The server URL and token: flags, then the environment, then the config file.
fn connection(g: &Globals) -> Result<(String, Option<String>), String> {
    let file = settings::load()?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let url = g
        .url
        .clone()
        .or_else(|| env("IMS_URL"))
        .or_else(|| settings::get(&file, "url"))
        .unwrap_or_else(|| ims_client::DEFAULT_URL.to_string());
    let token = g
        .token
        .as_deref()
        .map(token_argument)
        .transpose()?
        .or_else(|| env("IMS_TOKEN"))
        .or_else(|| settings::get(&file, "token"));
    Ok((url, token))
}

fn send(req: Request, g: &Globals, format: Format) -> Result<ExitCode, String> {
    let client = client(g)?;
    let host_keys = matches!(req, Request::HostKeys(_) | Request::AcceptHostKey(..));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let body = rt.block_on(async {
        let e = |e: ims_client::Error| e.to_string();
        match req {
            Request::List(r) => client.list(r).await.map_err(e),
            Request::Describe(r, id) => {
                by_id_or_name(&client, r, &id, async |id: &str| {
                    client.describe(r, id).await
                })
                .await
            }
            Request::Create(r, body) => client.create(r, &body).await.map_err(e),
            Request::Update(r, id, body) => {
                by_id_or_name(&client, r, &id, async |id: &str| {
                    client.update(r, id, body.as_ref()).await
                })
                .await
            }
            Request::Delete(r, id) => {
                by_id_or_name(&client, r, &id, async |id: &str| client.delete(r, id).await).await
            }
            Request::DeleteAll(r, q, yes) => {
                if !yes {
                    confirm_delete_all(&client, r, &q).await?;
                }
                let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
                client.delete_all(r, &q).await.map_err(e)
            }
            Request::Version => client.version().await.map_err(e),
            Request::HostKeys(x) => client.node_host_keys(&x).await.map_err(e),
            Request::AcceptHostKey(x, f) => client.node_accept_host_key(&x, &f).await.map_err(e),
        }
    })?;
    if host_keys {
        return nodes::print_host_keys(&body, format);
    }
    print(&body, format)?;
    Ok(ExitCode::SUCCESS)
}

/// What one record of `r` is called in messages, and whether its records have a `name`.
fn kind_of(r: Resource) -> (&'static str, bool) {
    use Resource as R;
    match r {
        R::Images => ("image", true),
        R::Recipes => ("recipe", true),
        R::PublicKeys => ("public key", true),
        R::DeletedImages => ("deleted image", true),
        R::DeletedRecipes => ("deleted recipe", true),
        R::DeletedPublicKeys => ("deleted public key", true),
        R::Jobs => ("job", false),
        R::RemoteBuildNodes | R::RemoteBuildNodesStatus => ("remote build node", false),
    }
}

/// Runs `op` on the record `arg` names: as an id first (exactly the request `cray` sends), and
/// when no record has that id and `arg` is not an id but the name of exactly one record of `r`,
/// again with that record's id. An ambiguous name is an error listing the candidates; an unknown
/// one keeps the server's 404.
async fn by_id_or_name(
    client: &Client,
    r: Resource,
    arg: &str,
    op: impl AsyncFn(&str) -> ims_client::Result<Value>,
) -> Result<Value, String> {
    match op(arg).await {
        Err(e)
            if e.status() == Some(404) && kind_of(r).1 && uuid::Uuid::try_parse(arg).is_err() =>
        {
            match find_by_name(client, r, arg).await? {
                Some(id) => op(&id).await.map_err(|e| e.to_string()),
                None => Err(e.to_string()),
            }
        }
        other => other.map_err(|e| e.to_string()),
    }
}

/// The id of the one record of `r` named `name`; `None` when none is. Several are an error that
/// lists them.
async fn find_by_name(client: &Client, r: Resource, name: &str) -> Result<Option<String>, String> {
    let (kind, _) = kind_of(r);
    let arg = name;
    let all = client.list(r).await.map_err(|e| e.to_string())?;
    let matches: Vec<&Value> = all
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v.get("name").and_then(Value::as_str) == Some(arg))
        .collect();
    let id_of = |v: &Value| {
        v.get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    match matches.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(id_of(one))),
        several => {
            let mut msg = format!(
                "{} {kind}s are named {arg:?}; give the id of one of them:",
                several.len()
            );
            for v in several {
                let created = v.get("created").and_then(Value::as_str).unwrap_or("");
                msg.push_str(&format!("\n  {}  created {created}", id_of(v)));
            }
            Err(msg)
        }
    }
}

/// `deleteall` on a terminal without `--yes`: says how many records would go and asks.
async fn confirm_delete_all(
    client: &Client,
    r: Resource,
    filters: &[(&'static str, String)],
) -> Result<(), String> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Ok(());
    }
    let (kind, _) = kind_of(r);
    let what = if filters.is_empty() {
        let n = client
            .list(r)
            .await
            .map_err(|e| e.to_string())?
            .as_array()
            .map_or(0, Vec::len);
        format!("all {n} {kind} records")
    } else {
        let f: Vec<String> = filters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("every {kind} record matching {}", f.join(", "))
    };
    eprint!("Delete {what}? [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err("not confirmed; nothing was deleted (--yes skips the question)".to_string()),
    }
}

fn config(op: ConfigOp, format: Format) -> Result<(), String> {
    let mut table = settings::load()?;
    match op {
        ConfigOp::Set { settings: pairs } => {
            for p in &pairs {
                let (k, v) = p
                    .split_once('=')
                    .ok_or_else(|| format!("expected KEY=VALUE, got {p:?}"))?;
                let k = k.trim();
                if !settings::KEYS.contains(&k) {
                    return Err(format!(
                        "unknown setting {k:?} (known: {})",
                        settings::KEYS.join(", ")
                    ));
                }
                if k == "url" && !v.is_empty() {
                    Client::new(v, None).map_err(|e| e.to_string())?;
                }
                if v.is_empty() {
                    table.remove(k);
                } else {
                    table.insert(k.to_string(), toml::Value::String(v.to_string()));
                }
            }
            let p = settings::save(&table)?;
            if !terminal::quiet() {
                eprintln!("Wrote {}", p.display());
            }
            Ok(())
        }
        ConfigOp::Get { key } => {
            if let Some(t) = table.get_mut("token").and_then(|t| match t {
                toml::Value::String(s) => Some(s),
                _ => None,
            }) {
                *t = settings::mask(t);
            }
            let shown = serde_json::to_value(&table).map_err(|e| e.to_string())?;
            match key {
                Some(k) => match shown.get(&k) {
                    Some(Value::String(s)) => print(&Value::String(s.clone()), format),
                    Some(v) => print(v, format),
                    None => Err(format!(
                        "{k:?} is not set in {}",
                        settings::path()?.display()
                    )),
                },
                None => print(&shown, format),
            }
        }
    }
}

/// Sets `key` when there is a value.
fn put(o: &mut Map<String, Value>, key: &str, v: Option<impl Into<Value>>) {
    if let Some(v) = v {
        o.insert(key.to_string(), v.into());
    }
}

/// Puts `link: {path, etag, type}` with the options given (none: no `link`).
fn put_link(o: &mut Map<String, Value>, l: Link) {
    let mut link = Map::new();
    put(&mut link, "path", l.link_path);
    put(&mut link, "etag", l.link_etag);
    put(&mut link, "type", l.link_type);
    if !link.is_empty() {
        o.insert("link".into(), Value::Object(link));
    }
}

/// Zips two comma-separated lists into objects, as cray does for array-of-object options.
fn zip(
    a_name: &str,
    a: Option<Vec<Value>>,
    b_name: &str,
    b: Option<Vec<Value>>,
    either_optional: bool,
) -> Result<Option<Value>, String> {
    let (a_key, b_key) = (field_of(a_name), field_of(b_name));
    match (a, b) {
        (None, None) => Ok(None),
        (Some(a), None) if either_optional => Ok(Some(Value::Array(
            a.into_iter().map(|x| json!({ a_key: x })).collect(),
        ))),
        // `--ssh-containers-jail True` alone (as the CSM procedures write it): the server names
        // the container.
        (None, Some(b)) if either_optional => Ok(Some(Value::Array(
            b.into_iter().map(|y| json!({ b_key: y })).collect(),
        ))),
        (a, b) => {
            let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
            if a.len() != b.len() {
                return Err(format!(
                    "--{a_name} and --{b_name} must have the same number of values ({} and {})",
                    a.len(),
                    b.len()
                ));
            }
            Ok(Some(Value::Array(
                a.into_iter()
                    .zip(b)
                    .map(|(x, y)| json!({ a_key: x, b_key: y }))
                    .collect(),
            )))
        }
    }
}

/// `template-dictionary-key` → `key`.
fn field_of(option: &str) -> &str {
    option.rsplit('-').next().unwrap_or(option)
}

fn strings(v: Option<Vec<String>>) -> Option<Vec<Value>> {
    v.map(|v| v.into_iter().map(Value::String).collect())
}

fn template_dictionary(t: TemplateDictionary) -> Result<Option<Value>, String> {
    zip(
        "template-dictionary-key",
        strings(t.template_dictionary_key),
        "template-dictionary-value",
        strings(t.template_dictionary_value),
        false,
    )
}

fn patch(o: Map<String, Value>) -> Option<Value> {
    (!o.is_empty()).then_some(Value::Object(o))
}

/// The generic verbs of a resource.
fn simple(r: Resource, list: bool, describe: Option<String>, delete: Option<String>) -> Request {
    match (list, describe, delete) {
        (true, _, _) => Request::List(r),
        (_, Some(id), _) => Request::Describe(r, id),
        (_, _, Some(id)) => Request::Delete(r, id),
        _ => Request::DeleteAll(r, vec![], false),
    }
}

/// `deleteall` of a whole collection.
fn delete_all(r: Resource, c: Confirm) -> Request {
    Request::DeleteAll(r, vec![], c.yes)
}

/// Checks the arguments and builds the request (nothing is sent yet).
fn request(cmd: Command) -> Result<Request, String> {
    use Resource as R;
    Ok(match cmd {
        Command::Config { .. } | Command::Artifacts { .. } => unreachable!("handled by run"),
        Command::Version { .. } => Request::Version,
        Command::Images { verb } => match verb {
            ImagesVerb::List => simple(R::Images, true, None, None),
            ImagesVerb::Describe(i) => simple(R::Images, false, Some(i.id), None),
            ImagesVerb::Delete(i) => simple(R::Images, false, None, Some(i.id)),
            ImagesVerb::Deleteall(c) => delete_all(R::Images, c),
            ImagesVerb::Verify(_) | ImagesVerb::Import(_) | ImagesVerb::Shell(_) => {
                unreachable!("handled by run")
            }
            ImagesVerb::Create {
                name,
                link,
                arch,
                metadata_key,
                metadata_value,
            } => {
                let mut o = Map::new();
                o.insert("name".into(), name.into());
                put_link(&mut o, link);
                put(&mut o, "arch", arch);
                let mut m = Map::new();
                put(&mut m, "key", metadata_key);
                put(&mut m, "value", metadata_value);
                if !m.is_empty() {
                    o.insert("metadata".into(), Value::Object(m));
                }
                Request::Create(R::Images, Value::Object(o))
            }
            ImagesVerb::Update {
                id,
                link,
                arch,
                metadata_operation,
                metadata_key,
                metadata_value,
            } => {
                let mut o = Map::new();
                put_link(&mut o, link);
                put(&mut o, "arch", arch);
                let mut m = Map::new();
                put(&mut m, "operation", metadata_operation);
                put(&mut m, "key", metadata_key);
                put(&mut m, "value", metadata_value);
                if !m.is_empty() {
                    o.insert("metadata".into(), Value::Object(m));
                }
                Request::Update(R::Images, id, patch(o))
            }
        },
        Command::Recipes { verb } => match verb {
            RecipesVerb::List => simple(R::Recipes, true, None, None),
            RecipesVerb::Describe(i) => simple(R::Recipes, false, Some(i.id), None),
            RecipesVerb::Delete(i) => simple(R::Recipes, false, None, Some(i.id)),
            RecipesVerb::Deleteall(c) => delete_all(R::Recipes, c),
            RecipesVerb::Import { .. } => unreachable!("handled by run"),
            RecipesVerb::Create {
                name,
                recipe_type,
                linux_distribution,
                link,
                arch,
                require_dkms,
                template,
            } => {
                let mut o = Map::new();
                put_link(&mut o, link);
                o.insert("recipe_type".into(), recipe_type.into());
                o.insert("linux_distribution".into(), linux_distribution.into());
                o.insert("name".into(), name.into());
                put(&mut o, "arch", arch);
                put(&mut o, "require_dkms", require_dkms);
                put(
                    &mut o,
                    "template_dictionary",
                    template_dictionary(template)?,
                );
                Request::Create(R::Recipes, Value::Object(o))
            }
            RecipesVerb::Update {
                id,
                link,
                arch,
                require_dkms,
                template,
            } => {
                let mut o = Map::new();
                put_link(&mut o, link);
                put(&mut o, "arch", arch);
                put(&mut o, "require_dkms", require_dkms);
                put(
                    &mut o,
                    "template_dictionary",
                    template_dictionary(template)?,
                );
                Request::Update(R::Recipes, id, patch(o))
            }
        },
        Command::PublicKeys { verb } => match verb {
            PublicKeysVerb::List => simple(R::PublicKeys, true, None, None),
            PublicKeysVerb::Describe(i) => simple(R::PublicKeys, false, Some(i.id), None),
            PublicKeysVerb::Delete(i) => simple(R::PublicKeys, false, None, Some(i.id)),
            PublicKeysVerb::Deleteall(c) => delete_all(R::PublicKeys, c),
            PublicKeysVerb::Create { name, public_key } => {
                let key = std::fs::read(&public_key)
                    .map_err(|e| format!("cannot read {}: {e}", public_key.display()))?;
                let key = String::from_utf8(key)
                    .map_err(|_| format!("{} is not UTF-8 text", public_key.display()))?;
                // Checked here too, so that a private key (the forgotten `.pub`) never leaves
                // this host; the server refuses anything else that is not one public key.
                if let Err(e) = ims_core::sshkey::check_public_key(&key) {
                    return Err(match e {
                        ims_core::sshkey::KeyError::PrivateKey => format!(
                            "{} is a private key; use the .pub file (nothing was sent)",
                            public_key.display()
                        ),
                        e => format!(
                            "{} is not an OpenSSH public key: {e} (nothing was sent)",
                            public_key.display()
                        ),
                    });
                }
                Request::Create(R::PublicKeys, json!({"name": name, "public_key": key}))
            }
        },
        Command::Jobs { verb } => match verb {
            JobsVerb::List => simple(R::Jobs, true, None, None),
            JobsVerb::Describe(i) => simple(R::Jobs, false, Some(i.id), None),
            JobsVerb::Delete(i) => simple(R::Jobs, false, None, Some(i.id)),
            JobsVerb::Complete(_) | JobsVerb::Fail(_) | JobsVerb::Logs { .. } => {
                unreachable!("handled by run")
            }
            JobsVerb::Deleteall {
                status,
                job_type,
                age,
                confirm,
            } => {
                let mut q = vec![];
                q.extend(status.map(|v| ("status", v)));
                q.extend(job_type.map(|v| ("job_type", v)));
                q.extend(age.map(|v| ("age", v)));
                Request::DeleteAll(R::Jobs, q, confirm.yes)
            }
            JobsVerb::Create {
                job_type,
                artifact_id,
                public_key_id,
                image_root_archive_name,
                kernel_file_name,
                initrd_file_name,
                kernel_parameters_file_name,
                enable_debug,
                build_env_size,
                job_mem_size,
                require_dkms,
                ssh_containers_name,
                ssh_containers_jail,
                wait: _,
            } => {
                let mut o = Map::new();
                o.insert("job_type".into(), job_type.into());
                o.insert(
                    "image_root_archive_name".into(),
                    image_root_archive_name.into(),
                );
                put(&mut o, "kernel_file_name", kernel_file_name);
                o.insert("initrd_file_name".into(), initrd_file_name.into());
                o.insert(
                    "kernel_parameters_file_name".into(),
                    kernel_parameters_file_name.into(),
                );
                o.insert("artifact_id".into(), artifact_id.into());
                o.insert("public_key_id".into(), public_key_id.into());
                put(&mut o, "enable_debug", enable_debug);
                put(&mut o, "build_env_size", build_env_size);
                put(&mut o, "job_mem_size", job_mem_size);
                put(&mut o, "require_dkms", require_dkms);
                let containers = zip(
                    "ssh-containers-name",
                    strings(ssh_containers_name),
                    "ssh-containers-jail",
                    ssh_containers_jail.map(|v| v.into_iter().map(Value::Bool).collect()),
                    true,
                )?;
                put(&mut o, "ssh_containers", containers);
                Request::Create(R::Jobs, Value::Object(o))
            }
        },
        Command::RemoteBuildNodes { verb } => match verb {
            NodesVerb::List => simple(R::RemoteBuildNodes, true, None, None),
            NodesVerb::Describe(x) => simple(R::RemoteBuildNodes, false, Some(x.xname), None),
            NodesVerb::Delete(x) => simple(R::RemoteBuildNodes, false, None, Some(x.xname)),
            NodesVerb::Deleteall(c) => delete_all(R::RemoteBuildNodes, c),
            NodesVerb::Create {
                xname,
                capacity,
                drained,
            } => {
                let mut o = Map::new();
                o.insert("xname".into(), xname.into());
                put(&mut o, "capacity", capacity.capacity);
                put(&mut o, "drained", drained);
                Request::Create(R::RemoteBuildNodes, Value::Object(o))
            }
            NodesVerb::Update {
                xname,
                capacity,
                capacity_default,
                drained,
            } => {
                let mut o = Map::new();
                put(&mut o, "capacity", capacity.capacity);
                if capacity_default {
                    o.insert("capacity".into(), Value::Null);
                }
                put(&mut o, "drained", drained);
                if o.is_empty() {
                    return Err(format!(
                        "nothing to change for {xname}: give --capacity N, --capacity-default or \
                         --drained true|false (nothing was sent)"
                    ));
                }
                Request::Update(R::RemoteBuildNodes, xname, Some(Value::Object(o)))
            }
            NodesVerb::Drain(x) => Request::Update(
                R::RemoteBuildNodes,
                x.xname,
                Some(json!({ "drained": true })),
            ),
            NodesVerb::Undrain(x) => Request::Update(
                R::RemoteBuildNodes,
                x.xname,
                Some(json!({ "drained": false })),
            ),
            NodesVerb::HostKey { verb } => match verb {
                HostKeyVerb::Show(x) => Request::HostKeys(x.xname),
                HostKeyVerb::Accept { xname, fingerprint } => {
                    Request::AcceptHostKey(xname, nodes::fingerprint(&fingerprint)?)
                }
            },
            NodesVerb::Status { verb } => match verb {
                NodesStatusVerb::List => Request::List(R::RemoteBuildNodesStatus),
                NodesStatusVerb::Describe(x) => {
                    Request::Describe(R::RemoteBuildNodesStatus, x.xname)
                }
            },
        },
        Command::Deleted { what } => {
            let (r, verb) = match what {
                DeletedWhat::Images { verb } => (R::DeletedImages, verb),
                DeletedWhat::Recipes { verb } => (R::DeletedRecipes, verb),
                DeletedWhat::PublicKeys { verb } => (R::DeletedPublicKeys, verb),
            };
            match verb {
                DeletedVerb::List => simple(r, true, None, None),
                DeletedVerb::Describe(i) => simple(r, false, Some(i.id), None),
                DeletedVerb::Delete(i) => simple(r, false, None, Some(i.id)),
                DeletedVerb::Deleteall(c) => delete_all(r, c),
                DeletedVerb::Update { id, operation } => {
                    Request::Update(r, id, operation.map(|op| json!({ "operation": op })))
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn job_logs_cannot_drive_the_terminal() {
        assert_eq!(
            super::printable(b"ok\tline\n\x1b]0;pwned\x07\x1b[2J\r\x7f\xc2\x9b caf\xc3\xa9\n"),
            "ok\tline\n^[]0;pwned^G^[[2J^M^?\u{fffd} caf\u{e9}\n".as_bytes()
        );
    }

    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        cmd: Command,
        #[command(flatten)]
        g: Globals,
    }

    fn req(args: &[&str]) -> Result<Request, String> {
        let t = T::try_parse_from(std::iter::once("ims").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        request(t.cmd)
    }

    #[test]
    fn bodies_match_cray() {
        assert_eq!(
            req(&["images", "create", "--name", "img-min"]).unwrap(),
            Request::Create(Resource::Images, json!({"name": "img-min"}))
        );
        assert_eq!(
            req(&["images", "update", "X"]).unwrap(),
            Request::Update(Resource::Images, "X".into(), None)
        );
        assert_eq!(
            req(&[
                "recipes",
                "update",
                "R",
                "--require-dkms",
                "no",
                "--template-dictionary-key",
                "X",
                "--template-dictionary-value",
                "Y"
            ])
            .unwrap(),
            Request::Update(
                Resource::Recipes,
                "R".into(),
                Some(
                    json!({"require_dkms": false, "template_dictionary": [{"key": "X", "value": "Y"}]})
                )
            )
        );
        assert_eq!(
            req(&[
                "jobs",
                "create",
                "--job-type",
                "create",
                "--artifact-id",
                "A",
                "--public-key-id",
                "P",
                "--image-root-archive-name",
                "myimg"
            ])
            .unwrap(),
            Request::Create(
                Resource::Jobs,
                json!({"job_type": "create", "image_root_archive_name": "myimg",
                       "initrd_file_name": "initrd", "kernel_parameters_file_name": "kernel-parameters",
                       "artifact_id": "A", "public_key_id": "P"})
            )
        );
        assert_eq!(
            req(&["jobs", "deleteall", "--status", "success", "--age", "1d"]).unwrap(),
            Request::DeleteAll(
                Resource::Jobs,
                vec![("status", "success".into()), ("age", "1d".into())],
                false
            )
        );
        assert_eq!(
            req(&[
                "deleted",
                "recipes",
                "update",
                "R",
                "--operation",
                "undelete"
            ])
            .unwrap(),
            Request::Update(
                Resource::DeletedRecipes,
                "R".into(),
                Some(json!({"operation": "undelete"}))
            )
        );
    }

    #[test]
    fn remote_build_node_bodies() {
        let node = |args: &[&str]| {
            let mut a = vec!["remote-build-nodes"];
            a.extend_from_slice(args);
            req(&a)
        };
        assert_eq!(
            node(&["create", "--xname", "x1"]).unwrap(),
            Request::Create(Resource::RemoteBuildNodes, json!({"xname": "x1"}))
        );
        assert_eq!(
            node(&[
                "create",
                "--xname",
                "x1",
                "--capacity",
                "3",
                "--drained",
                "yes"
            ])
            .unwrap(),
            Request::Create(
                Resource::RemoteBuildNodes,
                json!({"xname": "x1", "capacity": 3, "drained": true})
            )
        );
        // Out-of-range values go to the server, which states the range.
        assert_eq!(
            node(&["update", "x1", "--capacity", "-1"]).unwrap(),
            Request::Update(
                Resource::RemoteBuildNodes,
                "x1".into(),
                Some(json!({"capacity": -1}))
            )
        );
        assert_eq!(
            node(&["update", "x1", "--capacity-default", "--drained", "false"]).unwrap(),
            Request::Update(
                Resource::RemoteBuildNodes,
                "x1".into(),
                Some(json!({"capacity": null, "drained": false}))
            )
        );
        for (verb, drained) in [("drain", true), ("undrain", false)] {
            assert_eq!(
                node(&[verb, "x1"]).unwrap(),
                Request::Update(
                    Resource::RemoteBuildNodes,
                    "x1".into(),
                    Some(json!({ "drained": drained }))
                )
            );
        }
        assert_eq!(
            node(&["host-key", "show", "x1"]).unwrap(),
            Request::HostKeys("x1".into())
        );
        let fp = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert_eq!(
            node(&["host-key", "accept", "x1", "--fingerprint", fp]).unwrap(),
            Request::AcceptHostKey("x1".into(), fp.into())
        );
    }

    #[test]
    fn bad_remote_build_node_options_are_refused() {
        let e = req(&["remote-build-nodes", "update", "x1"]).unwrap_err();
        assert!(e.contains("nothing to change for x1"), "{e}");
        assert!(e.contains("nothing was sent"), "{e}");
        let e = req(&[
            "remote-build-nodes",
            "update",
            "x1",
            "--capacity",
            "2",
            "--capacity-default",
        ])
        .unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
        assert!(
            req(&[
                "remote-build-nodes",
                "create",
                "--xname",
                "x1",
                "--capacity",
                "x"
            ])
            .is_err()
        );
        assert!(req(&["remote-build-nodes", "drain", "x1", "--drained", "true"]).is_err());
        let e = req(&[
            "remote-build-nodes",
            "host-key",
            "accept",
            "x1",
            "--fingerprint",
            "MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48",
        ])
        .unwrap_err();
        assert!(e.contains("not a SHA256 fingerprint"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(req(&["images", "create", "--name", "n", "--arch", "sparc"]).is_err());
        assert!(req(&["recipes", "update", "R", "--require-dkms", "maybe"]).is_err());
        let e = req(&[
            "recipes",
            "update",
            "R",
            "--template-dictionary-key",
            "A,B",
            "--template-dictionary-value",
            "1",
        ])
        .unwrap_err();
        assert!(e.contains("same number of values"), "{e}");
        // `--ssh-containers-jail` alone is the seeds' form (the server names the container).
        assert_eq!(
            req(&[
                "jobs",
                "create",
                "--job-type",
                "customize",
                "--artifact-id",
                "A",
                "--public-key-id",
                "P",
                "--image-root-archive-name",
                "n",
                "--ssh-containers-jail",
                "True"
            ])
            .unwrap(),
            Request::Create(
                Resource::Jobs,
                json!({"job_type": "customize", "image_root_archive_name": "n",
                       "initrd_file_name": "initrd", "kernel_parameters_file_name": "kernel-parameters",
                       "artifact_id": "A", "public_key_id": "P", "ssh_containers": [{"jail": true}]})
            )
        );
    }
}
