//! Test harness: a real `ims serve` process on 127.0.0.1:0 over HTTP, with SQLite or PostgreSQL,
//! artifacts in its data directory (the local artifact store), and seeding through the real
//! `ims migrate import` (records with chosen ids and timestamps the API cannot set).
#![allow(dead_code)]

pub mod cli;
pub mod jobs;
pub mod kube;
pub mod nodes;
pub mod pod;
pub mod podman;
#[allow(unused_imports)]
pub use cli::{Cli, Out};

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A well-formed OpenSSH public key (ed25519) for records that need one; nobody holds its private key.
pub const PUBLIC_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMHcrBAKqXIvSdnVXEGDk43qhGflqc1mzQUR37MsZKx5 test@ims";

/// A job token as a server whose job-token key file holds `key_hex` issues it, valid for an hour.
pub fn job_token(key_hex: &str, job: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    job_token_until(key_hex, job, now + 3600)
}

/// A job token valid until `expires` (Unix seconds), in the documented format:
/// `ims-job.<id>.<expires>.<hex HMAC-SHA256(key, "ims job token v2\0" + id + "\0" + expires)>`.
pub fn job_token_until(key_hex: &str, job: &str, expires: i64) -> String {
    use hmac::Mac;
    let key: Vec<u8> = (0..key_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&key_hex[i..i + 2], 16).unwrap())
        .collect();
    let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).unwrap();
    m.update(b"ims job token v2\0");
    m.update(job.as_bytes());
    m.update(b"\0");
    m.update(expires.to_string().as_bytes());
    let mac: String = m
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("ims-job.{job}.{expires}.{mac}")
}

/// The `ims` binary under test: this build's, or for benchmarks the one `IMS_BENCH_BIN` names (a
/// release build).
pub fn ims_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("IMS_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ims").to_string())
    })
}

/// A server being set up: data directory and database chosen, not started yet.
pub struct Builder {
    pub db: Db,
    pub data: tempfile::TempDir,
    pub db_url: Option<String>,
    pub env: Vec<(String, String)>,
    pub seed: Vec<(String, Value)>,
}

/// The test setting (not read by `ims`) asking for [`Builder::relative_data_dir`].
pub const RELATIVE_DATA_DIR: &str = "IMS_TEST_RELATIVE_DATA_DIR";

pub async fn builder(db: Db) -> Builder {
    let db_url = match db {
        Db::Sqlite => None,
        Db::Postgres => Some(ims_store::testing::postgres_url().await),
    };
    Builder {
        db,
        data: tempfile::tempdir().expect("tempdir"),
        db_url,
        env: vec![],
        seed: vec![],
    }
}

impl Builder {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Seeds an original-format data file (e.g. `v2.4_jobs.json`) imported before start.
    pub fn seed(mut self, file: &str, records: Value) -> Self {
        self.seed.push((file.into(), records));
        self
    }

    /// Runs the server (and every command) from the data directory's parent with `--data-dir
    /// ./<name>`, as the README's `scripts/serve.sh` runs `ims serve` with the relative default
    /// `./ims-data`. Kept as a setting ([`RELATIVE_DATA_DIR`]) so restarts keep it.
    pub fn relative_data_dir(self) -> Self {
        self.env(RELATIVE_DATA_DIR, "1")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(ims_bin());
        c.args(args).arg("--data-dir");
        let data = self.data.path();
        let relative = self.env.iter().any(|(k, _)| k == RELATIVE_DATA_DIR);
        match (relative, data.parent(), data.file_name()) {
            (true, Some(parent), Some(name)) => c
                .arg(std::path::Path::new(".").join(name))
                .current_dir(parent),
            _ => c.arg(data),
        };
        c.env_remove("IMS_CONFIG")
            .env("IMS_LOG", "info")
            // API tests keep jobs as records; tests of running jobs ask for the local executor.
            .env("IMS_JOB_EXECUTOR", "none");
        if let Some(u) = &self.db_url {
            c.arg("--database-url").arg(u);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub async fn start(self) -> Server {
        if !self.seed.is_empty() {
            let dir = self.data.path().join("seed");
            std::fs::create_dir_all(&dir).unwrap();
            for (f, v) in &self.seed {
                std::fs::write(dir.join(f), serde_json::to_vec(v).unwrap()).unwrap();
            }
            let out = self
                .command(&["migrate", "import"])
                .arg(&dir)
                .output()
                .expect("run ims migrate import");
            assert!(
                out.status.success(),
                "seeding failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // A fixed API address (for restarts that keep it) comes from an `IMS_LISTEN` setting, the
        // S3 endpoint's from `IMS_S3_LISTEN`.
        let listen = self
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "IMS_LISTEN")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "127.0.0.1:0".to_string());
        let s3_listen = self
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "IMS_S3_LISTEN")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "127.0.0.1:0".to_string());
        let mut child = self
            .command(&["serve", "--listen", &listen, "--s3-listen", &s3_listen])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ims serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line.clone());
                if let Some(i) = line.find("listening on http://")
                    && let Some(tx) = tx.take()
                {
                    let rest = &line[i + "listening on ".len()..];
                    let url = rest.split_whitespace().next().unwrap().to_string();
                    let _ = tx.send(url);
                }
                if std::env::var_os("IMS_TEST_SERVER_LOG").is_some() {
                    eprintln!("[ims serve] {line}");
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("ims serve did not report its address");
        Server {
            url,
            child,
            data: self.data,
            db_url: self.db_url,
            db: self.db,
            env: self.env,
            client: reqwest::Client::new(),
            log,
        }
    }
}

pub struct Server {
    pub url: String,
    pub child: Child,
    pub data: tempfile::TempDir,
    pub db_url: Option<String>,
    pub db: Db,
    pub env: Vec<(String, String)>,
    pub client: reqwest::Client,
    /// The lines the server logged so far (standard error).
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

pub async fn start(db: Db) -> Server {
    builder(db).await.start().await
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} (status {})",
                String::from_utf8_lossy(&self.body),
                self.status
            )
        })
    }

    /// Asserts a success status and returns the body as JSON.
    pub fn ok(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            String::from_utf8_lossy(&self.body)
        );
        if status == 204 {
            assert!(self.body.is_empty(), "204 must have an empty body");
            return Value::Null;
        }
        assert_eq!(self.content_type, "application/json");
        self.json()
    }

    /// Asserts a problem+json error with exactly `status,title,detail` (and `errors` when asked).
    pub fn problem(&self, status: u16, with_errors: bool) -> Value {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.content_type, "application/problem+json");
        let v = self.json();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort();
        let expected: &[&str] = if with_errors {
            &["detail", "errors", "status", "title"]
        } else {
            &["detail", "status", "title"]
        };
        assert_eq!(keys, expected, "problem keys of {v}");
        assert_eq!(v["status"], status);
        v
    }
}

impl Server {
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        content_type: Option<&str>,
    ) -> Resp {
        self.send_as(None, method, path, body, content_type).await
    }

    /// [`Server::send`] with a bearer token (`None`: none).
    pub async fn send_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        content_type: Option<&str>,
    ) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(m, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(b) = body {
            req = req.body(b.to_vec());
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = r.bytes().await.unwrap().to_vec();
        Resp {
            status,
            content_type,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send("GET", path, None, None).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send("DELETE", path, None, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        let b = serde_json::to_vec(body).unwrap();
        self.send("POST", path, Some(&b), Some("application/json"))
            .await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Resp {
        let b = serde_json::to_vec(body).unwrap();
        self.send("PATCH", path, Some(&b), Some("application/json"))
            .await
    }

    /// The file behind `s3://bucket/key` in the local artifact store.
    pub fn artifact_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.data.path().join("artifacts").join(bucket).join(key)
    }

    pub fn put_artifact(&self, bucket: &str, key: &str, data: &[u8]) {
        let p = self.artifact_path(bucket, key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    pub fn has_artifact(&self, bucket: &str, key: &str) -> bool {
        self.artifact_path(bucket, key).is_file()
    }

    pub fn read_artifact(&self, bucket: &str, key: &str) -> Vec<u8> {
        std::fs::read(self.artifact_path(bucket, key)).unwrap()
    }

    /// Stores an image's artifacts and a v1.0 manifest at `boot-images/<dir>/`; returns the link.
    pub fn put_image_artifacts(&self, dir: &str) -> Value {
        let mut artifacts = vec![];
        for (name, mime) in [
            ("rootfs", "application/vnd.cray.image.rootfs.squashfs"),
            ("kernel", "application/vnd.cray.image.kernel"),
            ("initrd", "application/vnd.cray.image.initrd"),
        ] {
            let key = format!("{dir}/{name}");
            self.put_artifact("boot-images", &key, format!("{name} of {dir}").as_bytes());
            artifacts.push(serde_json::json!({
                "link": {"path": format!("s3://boot-images/{key}"), "etag": "", "type": "s3"},
                "type": mime, "md5": "0123456789abcdef0123456789abcdef"}));
        }
        let manifest = serde_json::json!({"version": "1.0", "created": "2024-01-01 00:00:00", "artifacts": artifacts});
        self.put_artifact(
            "boot-images",
            &format!("{dir}/manifest.json"),
            &serde_json::to_vec(&manifest).unwrap(),
        );
        serde_json::json!({"path": format!("s3://boot-images/{dir}/manifest.json"), "etag": "", "type": "s3"})
    }

    /// Stops the server (SIGTERM) and starts a new one on the same data directory and database.
    pub async fn restart(mut self) -> Server {
        self.stop();
        reopen(&mut self).await
    }

    /// Stops the server with SIGTERM and waits.
    pub fn stop(&mut self) {
        unsafe_kill(self.child.id(), "TERM");
        let _ = self.child.wait();
    }
}

/// Starts a new server on a stopped (or killed) server's data directory and database, without
/// signalling the old, already reaped process again.
pub async fn reopen(s: &mut Server) -> Server {
    Builder {
        db: s.db,
        data: std::mem::replace(&mut s.data, tempfile::tempdir().unwrap()),
        db_url: s.db_url.clone(),
        env: s.env.clone(),
        seed: vec![],
    }
    .start()
    .await
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for a fixed address that survives restarts).
pub fn free_port() -> u16 {
    free_port_on(std::net::Ipv4Addr::LOCALHOST)
}

/// A TCP port on `addr` that was free a moment ago (a server address on a test network).
pub fn free_port_on(addr: std::net::Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((addr, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 300 ms until it holds; fails the test naming `what` after `within`.
pub async fn eventually<F: AsyncFnMut() -> bool>(within: Duration, what: &str, mut f: F) {
    let deadline = std::time::Instant::now() + within;
    while !f().await {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The median of a benchmark's figures (the upper one of an even count).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn unsafe_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A lower-case hyphenated UUIDv4 (`[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}`).
pub fn is_uuid4(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
        && b.iter().enumerate().all(|(i, c)| {
            [8, 13, 18, 23].contains(&i) || c.is_ascii_digit() || (b'a'..=b'f').contains(c)
        })
}

/// Sorted key set of a JSON object.
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

pub fn sorted(keys: &[&str]) -> Vec<String> {
    let mut k: Vec<String> = keys.iter().map(|s| s.to_string()).collect();
    k.sort();
    k
}

/// The wire timestamp format: `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`.
pub fn is_wire_time(s: &str) -> bool {
    s.len() == 32 && s.ends_with("+00:00") && s.as_bytes()[10] == b'T' && s.as_bytes()[19] == b'.'
}

/// Generates one test per backend for each `async fn name(db: Db)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::common::Db::Sqlite).await }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if ims_store::testing::skip_postgres() { return; }
                    super::$name($crate::common::Db::Postgres).await
                }
            )*
        }
    };
}

/// A child process killed (and reaped) when the test ends, also when it fails first.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Python with boto3 that the S3 tests drive (`IMS_TEST_PYTHON`, set by scripts/test.sh);
/// `None` when `IMS_TEST_SKIP_S3=1`.
pub fn test_python() -> Option<String> {
    if std::env::var("IMS_TEST_SKIP_S3").is_ok_and(|v| v == "1") {
        return None;
    }
    Some(std::env::var("IMS_TEST_PYTHON").expect(
        "IMS_TEST_PYTHON is not set: run the tests with scripts/test.sh (or set IMS_TEST_SKIP_S3=1)",
    ))
}

/// Runs the boto3 `script` (given the STS credentials JSON and `args`) with `py`; its JSON answer.
pub fn boto3(py: &str, script: &str, creds: &Value, args: &[&str]) -> Value {
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .arg(creds.to_string())
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "boto3 {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
