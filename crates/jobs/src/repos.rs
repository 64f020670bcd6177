//! `waiting_for_repos`: the package repositories a kiwi recipe names must answer before the build
//! starts (a mirror still syncing, a Nexus repository not yet created).
//!
//! * [`description_file`]: the recipe's kiwi description, `config.xml` or the single `*.kiwi`.
//! * [`repositories`]: every `<repository>` of it (type, source path, distribution, alias).
//! * [`probe_urls`]: what proves a repository is there: `repodata/repomd.xml` for rpm-md (and
//!   every type that is not apt-deb), `dists/<distribution>/InRelease` or `…/Release` for
//!   apt-deb (`InRelease`/`Release` at the top for a flat repository). Only http(s) sources are
//!   probed; `dir://`, `file://`, `obs://`, `iso://` and plain paths are local and accepted
//!   (the original refuses a recipe without any http(s) repository).
//! * [`wait_for_repos`]: probes until every repository answers 2xx or the time is up; the error
//!   names each repository still missing with its last answer.
//!
//! Credentials in a source URL (`https://user:pass@host/…`) are sent (as basic auth) but never
//! shown in messages.

use futures::future::join_all;

use crate::error::{Context, Error, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest one probe request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often at most the "still waiting" line is said.
const MISSING_EVERY: Duration = Duration::from_secs(30);
/// How much of a GET answer (when HEAD is refused) is read.
const GET_READ: usize = 4096;

/// A repository's type (kiwi's `type` attribute; absent means rpm-md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoKind {
    RpmMd,
    AptDeb,
    Other(String),
}

/// One `<repository>` of a kiwi description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    pub kind: RepoKind,
    /// `<source path=…>`, as written.
    pub url: String,
    pub distribution: Option<String>,
    pub alias: Option<String>,
}

impl Repo {
    /// How messages name it: its alias, else its URL (without credentials).
    pub fn name(&self) -> String {
        match &self.alias {
            Some(a) => a.clone(),
            None => redact(&self.url),
        }
    }
}

/// The recipe's kiwi description: `config.xml`, else the single `*.kiwi` file.
pub fn description_file(recipe: &Path) -> Result<PathBuf> {
    let config = recipe.join("config.xml");
    if std::fs::symlink_metadata(&config).is_ok() {
        return Ok(config);
    }
    let listing = std::fs::read_dir(recipe)
        .with_context(|| format!("recipe directory {}", recipe.display()))?;
    let mut kiwi = Vec::new();
    for e in listing {
        let e = e.with_context(|| format!("recipe directory {}", recipe.display()))?;
        let name = e.file_name();
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if !is_dir && name.to_string_lossy().ends_with(".kiwi") {
            kiwi.push(e.path());
        }
    }
    kiwi.sort();
    match kiwi.len() {
        1 => Ok(kiwi.remove(0)),
        0 => Err(Error::Refused(
            "the recipe has no kiwi description (config.xml or a *.kiwi file)".into(),
        )),
        _ => Err(Error::Refused(format!(
            "the recipe has no config.xml and several *.kiwi files: {}",
            kiwi.iter()
                .map(|p| p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Every `<repository>` of a kiwi description (the children of `<image>`), in order.
pub fn repositories(config_xml: &str) -> Result<Vec<Repo>> {
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(config_xml, opts)
        .map_err(|e| Error::Refused(format!("kiwi description: {e}")))?;
    let image = doc.root_element();
    if image.tag_name().name() != "image" {
        return Err(Error::Refused(format!(
            "kiwi description: the root element is <{}>, not <image>",
            image.tag_name().name()
        )));
    }
    let attr = |n: roxmltree::Node, a: &str| {
        n.attribute(a)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let mut out = Vec::new();
    for (i, node) in image
        .children()
        .filter(|n| n.is_element() && n.tag_name().name() == "repository")
        .enumerate()
    {
        let alias = attr(node, "alias");
        let which = match &alias {
            Some(a) => format!("repository {a:?}"),
            None => format!("repository #{}", i + 1),
        };
        let kind = match attr(node, "type").as_deref() {
            None | Some("rpm-md") => RepoKind::RpmMd,
            Some("apt-deb") => RepoKind::AptDeb,
            Some(other) => RepoKind::Other(other.to_string()),
        };
        let source = node
            .children()
            .find(|n| n.is_element() && n.tag_name().name() == "source")
            .ok_or_else(|| Error::Refused(format!("kiwi description: {which} has no <source>")))?;
        let url = attr(source, "path").ok_or_else(|| {
            Error::Refused(format!("kiwi description: {which} has no source path"))
        })?;
        out.push(Repo {
            kind,
            url,
            distribution: attr(node, "distribution"),
            alias,
        });
    }
    Ok(out)
}

fn is_http(url: &str) -> bool {
    let l = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

/// The URLs that prove `repo` is there (any one answering 2xx is enough); none for a source
/// that is not http(s).
pub fn probe_urls(repo: &Repo) -> Vec<String> {
    if !is_http(&repo.url) {
        return Vec::new();
    }
    // A query (a token, say) stays at the end.
    let cut = repo.url.find(['?', '#']).unwrap_or(repo.url.len());
    let (path, query) = repo.url.split_at(cut);
    let base = path.trim_end_matches('/');
    let at = |rest: &str| format!("{base}/{rest}{query}");
    match repo.kind {
        RepoKind::AptDeb => {
            match repo
                .distribution
                .as_deref()
                .map(|d| d.trim_matches('/'))
                .filter(|d| !d.is_empty())
            {
                Some(dist) => vec![
                    at(&format!("dists/{dist}/InRelease")),
                    at(&format!("dists/{dist}/Release")),
                ],
                None => vec![at("InRelease"), at("Release")],
            }
        }
        _ => vec![at("repodata/repomd.xml")],
    }
}

/// `url` without the user and password of its authority.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let start = scheme_end + 3;
    let end = url[start..]
        .find(['/', '?', '#'])
        .map(|i| start + i)
        .unwrap_or(url.len());
    match url[start..end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..start], &url[start + at + 1..]),
        None => url.to_string(),
    }
}

fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn describe(e: reqwest::Error) -> String {
    use std::error::Error;
    let e = e.without_url();
    let mut parts = vec![e.to_string()];
    let mut src = e.source();
    while let Some(inner) = src {
        let s = inner.to_string();
        if parts.last() != Some(&s) {
            parts.push(s);
        }
        src = inner.source();
    }
    parts.join(": ")
}

fn client(ca: Option<&Path>) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("ims-agent/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca)
            .with_context(|| format!("cannot read the CA certificate {}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            Error::Failed(format!("CA certificate {}: {}", ca.display(), describe(e)))
        })?;
        if certs.is_empty() {
            return Err(Error::Failed(format!(
                "CA certificate {}: no PEM certificate in it",
                ca.display()
            )));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build()
        .map_err(|e| Error::Failed(format!("cannot set up an HTTP client: {}", describe(e))))
}

/// One probe: HEAD, or a short GET when the server refuses HEAD.
async fn probe_one(client: &reqwest::Client, url: &str, t: Duration) -> Result<()> {
    let failed = |e| Error::Failed(describe(e));
    let head = client.head(url).timeout(t).send().await.map_err(failed)?;
    let mut status = head.status();
    if status == reqwest::StatusCode::METHOD_NOT_ALLOWED
        || status == reqwest::StatusCode::NOT_IMPLEMENTED
    {
        let mut get = client.get(url).timeout(t).send().await.map_err(failed)?;
        status = get.status();
        let mut read = 0;
        while read < GET_READ {
            match get.chunk().await {
                Ok(Some(c)) => read += c.len(),
                _ => break,
            }
        }
    }
    if status.is_success() {
        Ok(())
    } else {
        Err(Error::Failed(status.to_string()))
    }
}

/// A repository's probes in turn: the URL that answered, or every URL with its answer.
async fn probe_repo(client: &reqwest::Client, urls: &[String], t: Duration) -> Result<String> {
    let mut failed = Vec::new();
    for url in urls {
        match probe_one(client, url, t).await {
            Ok(()) => return Ok(url.clone()),
            Err(why) => failed.push(format!("{}: {why}", redact(url))),
        }
    }
    Err(Error::Failed(failed.join("; ")))
}

/// Waits until every http(s) repository of `repos` answers 2xx, probing every `every` for at
/// most `timeout` (plus one round of requests of at most 10 s). `ca`: a PEM file of extra
/// trusted roots (the site CA) for https repositories. `say` gets one line per repository as it
/// becomes ready and, at most every 30 s, one listing those still missing.
pub async fn wait_for_repos(
    repos: &[Repo],
    ca: Option<&Path>,
    timeout: Duration,
    every: Duration,
    say: &dyn Fn(&str),
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<(usize, Vec<String>)> = Vec::new();
    for (i, r) in repos.iter().enumerate() {
        let urls = probe_urls(r);
        if urls.is_empty() {
            say(&format!(
                "repository {} ({}) is not http(s): not probed",
                r.name(),
                redact(&r.url)
            ));
        } else {
            pending.push((i, urls));
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    let client = client(ca)?;
    let mut said_missing: Option<Instant> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let t = REQUEST_TIMEOUT.min(left).max(Duration::from_secs(1));
        let answers = join_all(pending.iter().map(|(_, urls)| probe_repo(&client, urls, t))).await;
        let mut missing = Vec::new();
        for ((i, urls), answer) in pending.into_iter().zip(answers) {
            match answer {
                Ok(url) => say(&format!(
                    "repository {} is reachable ({})",
                    repos[i].name(),
                    redact(&url)
                )),
                Err(why) => missing.push((i, urls, why)),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let list = missing
            .iter()
            .map(|(i, _, why)| format!("{} ({why})", repos[*i].name()))
            .collect::<Vec<_>>()
            .join(", ");
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Failed(format!(
                "repositories not reachable after {}: {list}",
                seconds(timeout)
            )));
        }
        if said_missing.is_none_or(|t| now.duration_since(t) >= MISSING_EVERY) {
            say(&format!(
                "waiting for {} of {} repositories: {list}",
                missing.len(),
                repos.len()
            ));
            said_missing = Some(now);
        }
        pending = missing.into_iter().map(|(i, urls, _)| (i, urls)).collect();
        tokio::time::sleep(every.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A Debian recipe's description, shaped like the ones kiwi 9.x builds.
    const CONFIG: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<!-- a comment before the root -->
<image schemaversion="7.4" name="debian-12-compute">
    <description type="system">
        <author>HPC</author>
        <contact>hpc@example.com</contact>
        <specification>Debian 12 compute node</specification>
    </description>
    <preferences>
        <version>1.0.0</version>
        <packagemanager>apt</packagemanager>
        <type image="tbz"/>
    </preferences>
    <repository type="apt-deb" alias="bookworm" distribution="bookworm"
                components="main contrib" use_for_bootstrap="true" imageinclude="true">
        <source path="http://deb.example.com/debian/"/>
    </repository>
    <repository type="apt-deb" alias="bookworm-security" distribution="bookworm-security"
                components="main">
        <source path="https://user:secret@security.example.com/debian-security"/>
    </repository>
    <repository type="rpm-md" alias="extras" priority="10">
        <source path="https://nexus.example.com/repository/extras/?token=abc"/>
    </repository>
    <repository alias="local" type="rpm-dir">
        <source path="dir:///var/lib/local-repo"/>
    </repository>
    <repository>
        <source path="obs://SUSE:SLE-15-SP6:GA/standard"/>
    </repository>
    <packages type="image">
        <package name="systemd"/>
    </packages>
</image>
"#;

    fn repo(kind: RepoKind, url: &str, dist: Option<&str>, alias: &str) -> Repo {
        Repo {
            kind,
            url: url.into(),
            distribution: dist.map(str::to_string),
            alias: Some(alias.into()),
        }
    }

    #[test]
    fn kiwi_repositories_parsed() {
        let r = repositories(CONFIG).unwrap();
        assert_eq!(
            r,
            [
                repo(
                    RepoKind::AptDeb,
                    "http://deb.example.com/debian/",
                    Some("bookworm"),
                    "bookworm"
                ),
                repo(
                    RepoKind::AptDeb,
                    "https://user:secret@security.example.com/debian-security",
                    Some("bookworm-security"),
                    "bookworm-security"
                ),
                repo(
                    RepoKind::RpmMd,
                    "https://nexus.example.com/repository/extras/?token=abc",
                    None,
                    "extras"
                ),
                repo(
                    RepoKind::Other("rpm-dir".into()),
                    "dir:///var/lib/local-repo",
                    None,
                    "local"
                ),
                Repo {
                    kind: RepoKind::RpmMd,
                    url: "obs://SUSE:SLE-15-SP6:GA/standard".into(),
                    distribution: None,
                    alias: None,
                },
            ]
        );
        assert_eq!(r[1].name(), "bookworm-security");
        assert_eq!(r[4].name(), "obs://SUSE:SLE-15-SP6:GA/standard");
    }

    #[test]
    fn bad_descriptions_refused() {
        assert!(
            repositories("<image><repository")
                .unwrap_err()
                .to_string()
                .contains("kiwi description")
        );
        assert!(
            repositories("<notkiwi/>")
                .unwrap_err()
                .to_string()
                .contains("not <image>")
        );
        let e = repositories(r#"<image><repository alias="a"/></image>"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("repository \"a\" has no <source>"), "{e}");
        let e = repositories(r#"<image><repository><source path=" "/></repository></image>"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("repository #1 has no source path"), "{e}");
        assert_eq!(repositories("<image/>").unwrap(), []);
    }

    #[test]
    fn probe_urls_by_kind() {
        let r = repositories(CONFIG).unwrap();
        assert_eq!(
            probe_urls(&r[0]),
            [
                "http://deb.example.com/debian/dists/bookworm/InRelease",
                "http://deb.example.com/debian/dists/bookworm/Release"
            ]
        );
        assert_eq!(
            probe_urls(&r[1]),
            [
                "https://user:secret@security.example.com/debian-security/dists/bookworm-security/InRelease",
                "https://user:secret@security.example.com/debian-security/dists/bookworm-security/Release"
            ]
        );
        assert_eq!(
            probe_urls(&r[2]),
            ["https://nexus.example.com/repository/extras/repodata/repomd.xml?token=abc"]
        );
        assert!(probe_urls(&r[3]).is_empty());
        assert!(probe_urls(&r[4]).is_empty());
        let flat = repo(RepoKind::AptDeb, "HTTPS://h/flat//", None, "flat");
        assert_eq!(
            probe_urls(&flat),
            ["HTTPS://h/flat/InRelease", "HTTPS://h/flat/Release"]
        );
        let other = repo(RepoKind::Other("yast2".into()), "http://h/y", None, "y");
        assert_eq!(probe_urls(&other), ["http://h/y/repodata/repomd.xml"]);
        for local in [
            "file:///srv/repo",
            "iso:///x.iso",
            "/srv/repo",
            "ftp://h/r",
            "httpx://h",
        ] {
            assert!(
                probe_urls(&repo(RepoKind::RpmMd, local, None, "l")).is_empty(),
                "{local}"
            );
        }
    }

    #[test]
    fn credentials_never_shown() {
        assert_eq!(redact("https://u:p@h/x?a@b"), "https://***@h/x?a@b");
        assert_eq!(redact("http://h/x@y"), "http://h/x@y");
        assert_eq!(redact("dir:///x"), "dir:///x");
        let r = Repo {
            alias: None,
            ..repo(RepoKind::RpmMd, "http://u:p@h/r", None, "")
        };
        assert_eq!(r.name(), "http://***@h/r");
    }

    #[test]
    fn description_file_found() {
        let t = tempfile::tempdir().unwrap();
        assert!(
            description_file(t.path())
                .unwrap_err()
                .to_string()
                .contains("no kiwi description")
        );
        std::fs::write(t.path().join("a.kiwi"), "<image/>").unwrap();
        assert_eq!(description_file(t.path()).unwrap(), t.path().join("a.kiwi"));
        std::fs::write(t.path().join("b.kiwi"), "<image/>").unwrap();
        let e = description_file(t.path()).unwrap_err().to_string();
        assert!(e.contains("a.kiwi, b.kiwi"), "{e}");
        std::fs::write(t.path().join("config.xml"), "<image/>").unwrap();
        assert_eq!(
            description_file(t.path()).unwrap(),
            t.path().join("config.xml")
        );
    }

    /// A tiny HTTP server on the loopback: `answer(method, path, since_start)` gives the status.
    async fn server(
        answer: impl Fn(&str, &str, Duration) -> u16 + Send + Sync + 'static,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let answer = Arc::new(answer);
        let start = Instant::now();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let answer = answer.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16384 {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req);
                    let mut first = text.lines().next().unwrap_or("").split(' ');
                    let method = first.next().unwrap_or("").to_string();
                    let path = first.next().unwrap_or("").to_string();
                    log.lock().unwrap().push(format!("{method} {path}"));
                    let code = answer(&method, &path, start.elapsed());
                    let reason = match code {
                        200 => "OK",
                        404 => "Not Found",
                        405 => "Method Not Allowed",
                        _ => "Whatever",
                    };
                    let body = if method == "GET" {
                        "x".repeat(100_000)
                    } else {
                        String::new()
                    };
                    let head = format!(
                        "HTTP/1.1 {code} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        if method == "GET" { body.len() } else { 0 }
                    );
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(body.as_bytes()).await;
                });
            }
        });
        (base, seen)
    }

    fn routes(method: &str, path: &str, since: Duration) -> u16 {
        match path {
            // InRelease missing, Release there: the alternative is enough.
            "/debian/dists/bookworm/InRelease" => 404,
            "/debian/dists/bookworm/Release" => 200,
            // Appears after a while (a mirror finishing its sync).
            "/late/repodata/repomd.xml" if since > Duration::from_millis(600) => 200,
            // Refuses HEAD; GET works.
            "/nohead/repodata/repomd.xml" if method == "HEAD" => 405,
            "/nohead/repodata/repomd.xml" => 200,
            "/token/repodata/repomd.xml?t=1" => 200,
            _ => 404,
        }
    }

    #[tokio::test]
    async fn waits_until_every_repository_answers() {
        let (base, seen) = server(routes).await;
        let repos = vec![
            repo(
                RepoKind::AptDeb,
                &format!("{base}/debian/"),
                Some("bookworm"),
                "bookworm",
            ),
            repo(RepoKind::RpmMd, &format!("{base}/late"), None, "late"),
            repo(RepoKind::RpmMd, &format!("{base}/nohead/"), None, "nohead"),
            repo(RepoKind::RpmMd, &format!("{base}/token?t=1"), None, "token"),
            repo(RepoKind::RpmMd, "dir:///srv/local", None, "local"),
        ];
        let said = Mutex::new(Vec::<String>::new());
        let say = |l: &str| said.lock().unwrap().push(l.to_string());
        let started = Instant::now();
        wait_for_repos(
            &repos,
            None,
            Duration::from_secs(20),
            Duration::from_millis(100),
            &say,
        )
        .await
        .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(600));
        assert!(started.elapsed() < Duration::from_secs(10));
        let said = said.into_inner().unwrap();
        for name in ["bookworm", "late", "nohead", "token"] {
            let n = said
                .iter()
                .filter(|l| l.starts_with(&format!("repository {name} is reachable")))
                .count();
            assert_eq!(n, 1, "{name}: {said:#?}");
        }
        assert!(
            said.iter()
                .any(|l| l.contains("local") && l.contains("not probed")),
            "{said:#?}"
        );
        // The "still missing" line once (well under 30 s), naming `late` only.
        let waiting: Vec<_> = said
            .iter()
            .filter(|l| l.starts_with("waiting for"))
            .collect();
        assert_eq!(waiting.len(), 1, "{said:#?}");
        assert!(
            waiting[0].starts_with("waiting for 1 of 5 repositories: late ("),
            "{said:#?}"
        );
        let seen = seen.lock().unwrap();
        assert!(
            seen.contains(&"GET /nohead/repodata/repomd.xml".to_string()),
            "{seen:?}"
        );
        // A ready repository is not asked again.
        let bookworm = seen
            .iter()
            .filter(|l| l.contains("/debian/dists/bookworm/Release"))
            .count();
        assert_eq!(bookworm, 1, "{seen:?}");
    }

    #[tokio::test]
    async fn timeout_names_every_missing_repository() {
        let (base, _) = server(routes).await;
        let repos = vec![
            repo(
                RepoKind::AptDeb,
                &format!("{base}/debian"),
                Some("bookworm"),
                "bookworm",
            ),
            repo(
                RepoKind::AptDeb,
                &format!("{base}/debian-security"),
                Some("bookworm-security"),
                "bookworm-security",
            ),
            repo(RepoKind::RpmMd, &format!("{base}/gone"), None, "gone"),
        ];
        let started = Instant::now();
        let e = wait_for_repos(
            &repos,
            None,
            Duration::from_millis(700),
            Duration::from_millis(100),
            &|_| {},
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(started.elapsed() >= Duration::from_millis(700));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            e.starts_with("repositories not reachable after 0.7 s: "),
            "{e}"
        );
        assert!(
            e.contains(&format!(
                "bookworm-security ({base}/debian-security/dists/bookworm-security/InRelease: \
                 404 Not Found; {base}/debian-security/dists/bookworm-security/Release: 404 Not Found)"
            )),
            "{e}"
        );
        assert!(
            e.contains(&format!(
                "gone ({base}/gone/repodata/repomd.xml: 404 Not Found)"
            )),
            "{e}"
        );
        assert!(
            !e.contains("bookworm ("),
            "a ready repository is not listed: {e}"
        );
    }

    #[tokio::test]
    async fn unreachable_server_and_bad_ca() {
        // A port nobody listens on (bound, then closed).
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let repos = vec![repo(
            RepoKind::RpmMd,
            &format!("http://u:pw@127.0.0.1:{port}/r"),
            None,
            "r",
        )];
        let e = wait_for_repos(
            &repos,
            None,
            Duration::from_millis(300),
            Duration::from_millis(100),
            &|_| {},
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("repositories not reachable after 0.3 s: r (http://***@127.0.0.1:"),
            "{e}"
        );
        assert!(!e.contains("pw"), "{e}");
        let t = tempfile::tempdir().unwrap();
        let missing = t.path().join("ca.crt");
        let with_ca = || {
            wait_for_repos(
                &repos,
                Some(&missing),
                Duration::from_secs(1),
                Duration::from_secs(1),
                &|_| {},
            )
        };
        let e = with_ca().await.unwrap_err().to_string();
        assert!(e.contains("cannot read the CA certificate"), "{e}");
        std::fs::write(&missing, "not a certificate").unwrap();
        let e = with_ca().await.unwrap_err().to_string();
        assert!(e.contains("CA certificate"), "{e}");
        // Nothing to probe: done at once, whatever the CA.
        let local = vec![repo(RepoKind::RpmMd, "dir:///x", None, "x")];
        wait_for_repos(
            &local,
            Some(&missing),
            Duration::ZERO,
            Duration::ZERO,
            &|_| {},
        )
        .await
        .unwrap();
    }
}
