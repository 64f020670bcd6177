//! Test harness: the endpoint in-process on 127.0.0.1:0 over a temporary root, driven by real
//! clients from PyPI (boto3 and the AWS CLI).
//!
//! `scripts/test.sh` installs them into a virtual environment and exports `IMS_TEST_PYTHON` and
//! `IMS_TEST_AWS`; without those the tests fail, unless `IMS_TEST_SKIP_S3=1`.

#![allow(dead_code)]

use ims_s3::{CredentialStore, Credentials, S3Config};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Defines helpers every Python snippet can use: `client()`, `err()`, `raw()`, and `s3`.
const PRELUDE: &str = r#"
import os, sys, json, hashlib, http.client, urllib.request, urllib.error, time, re
import boto3, botocore
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from urllib.parse import urlsplit, quote, unquote

EP = os.environ['S3_ENDPOINT']
AK, SK = os.environ['S3_AK'], os.environ['S3_SK']
TAK, TSK, TOK = os.environ['S3_TAK'], os.environ['S3_TSK'], os.environ['S3_TOK']
WORK = os.environ['WORK']

def client(ak=AK, sk=SK, token=None, region='us-east-1'):
    return boto3.client('s3', endpoint_url=EP, aws_access_key_id=ak, aws_secret_access_key=sk,
                        aws_session_token=token, region_name=region,
                        config=Config(retries={'max_attempts': 1}, s3={'addressing_style': 'path'}))

def err(fn, *a, **kw):
    """(error code, HTTP status) of a call that must fail."""
    try:
        fn(*a, **kw)
    except ClientError as e:
        return e.response['Error']['Code'], e.response['ResponseMetadata']['HTTPStatusCode']
    raise AssertionError(f'{fn.__name__} {a} {kw} succeeded')

def raw(method, path, body=b'', headers=None, ak=AK, sk=SK, token=None, region='us-east-1', sign=True):
    """Sends `path` byte for byte (no normalisation), SigV4-signed unless sign=False. The signature
    covers the canonical form of the path (decoded, then S3-encoded), as a client that means it
    would compute it, so that percent-encoded probes reach the server's own checks."""
    hdrs = dict(headers or {})
    if sign:
        p, q = (path.split('?', 1) + [''])[:2]
        canonical = quote(unquote(p), safe='/~') + ('?' + q if q else '')
        req = AWSRequest(method=method, url=EP + canonical, data=body, headers=hdrs)
        req.headers['X-Amz-Content-SHA256'] = hashlib.sha256(body).hexdigest()
        S3SigV4Auth(Credentials(ak, sk, token), 's3', region).add_auth(req)
        hdrs = dict(req.headers.items())
    u = urlsplit(EP)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request(method, path, body=body, headers=hdrs)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data

def md5(b):
    return hashlib.md5(b).hexdigest()

s3 = client()
"#;

pub struct Server {
    pub addr: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
    pub creds: Arc<CredentialStore>,
    pub temp: Credentials,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    python: String,
    aws: String,
    scripts: AtomicUsize,
}

fn clients() -> Option<(String, String)> {
    if std::env::var("IMS_TEST_SKIP_S3").is_ok_and(|v| v == "1") {
        eprintln!("IMS_TEST_SKIP_S3=1: the S3 client tests are skipped");
        return None;
    }
    let get = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: run the tests with scripts/test.sh, which installs boto3 and the AWS CLI into a \
                 virtual environment and exports IMS_TEST_PYTHON and IMS_TEST_AWS (or set IMS_TEST_SKIP_S3=1 to skip)"
            )
        })
    };
    Some((get("IMS_TEST_PYTHON"), get("IMS_TEST_AWS")))
}

/// Starts the endpoint, or returns `None` when the S3 client tests are skipped.
pub async fn start() -> Option<Server> {
    let (python, aws) = clients()?;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("work")).unwrap();
    let creds = Arc::new(CredentialStore::open(&dir.path().join("s3-credentials.json")).unwrap());
    let svc = ims_s3::service(
        S3Config {
            root: dir.path().join("root"),
            state_dir: dir.path().join("state"),
        },
        creds.clone(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ims_s3::serve(
        listener,
        svc,
        ims_s3::Limits::default(),
        async move {
            let _ = rx.await;
        },
    ));
    let temp = creds.issue(Duration::from_secs(600));
    Some(Server {
        addr,
        dir,
        creds,
        temp,
        stop: Some(tx),
        task: Some(task),
        python,
        aws,
        scripts: AtomicUsize::new(0),
    })
}

impl Server {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn env(&self) -> Vec<(String, String)> {
        let root = self.creds.root();
        vec![
            ("S3_ENDPOINT".into(), self.endpoint()),
            ("S3_AK".into(), root.access_key),
            ("S3_SK".into(), root.secret_key),
            ("S3_TAK".into(), self.temp.access_key.clone()),
            ("S3_TSK".into(), self.temp.secret_key.clone()),
            (
                "S3_TOK".into(),
                self.temp.session_token.clone().unwrap_or_default(),
            ),
            ("WORK".into(), self.work().display().to_string()),
            ("PYTHONUNBUFFERED".into(), "1".into()),
            // No user configuration leaks into the clients.
            ("HOME".into(), self.work().display().to_string()),
            ("AWS_CONFIG_FILE".into(), "/nonexistent".into()),
            ("AWS_SHARED_CREDENTIALS_FILE".into(), "/nonexistent".into()),
        ]
    }

    /// Runs a Python snippet (after the prelude) and returns its stdout; panics if it fails.
    pub async fn py(&self, script: &str) -> String {
        self.py_env(script, &[]).await
    }

    pub async fn py_env(&self, script: &str, extra: &[(&str, &str)]) -> String {
        let n = self.scripts.fetch_add(1, Ordering::SeqCst);
        let path = self.work().join(format!("script{n}.py"));
        std::fs::write(&path, format!("{PRELUDE}\n{script}")).unwrap();
        let out = tokio::process::Command::new(&self.python)
            .arg(&path)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env())
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .kill_on_drop(true)
            .output()
            .await
            .expect("run python");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "python snippet failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Runs the AWS CLI against the endpoint with the long-lived credentials.
    pub async fn aws(&self, args: &[&str]) -> std::process::Output {
        let root = self.creds.root();
        tokio::process::Command::new(&self.aws)
            .args(args)
            .args(["--endpoint-url", &self.endpoint()])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env())
            .env("AWS_ACCESS_KEY_ID", root.access_key)
            .env("AWS_SECRET_ACCESS_KEY", root.secret_key)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .kill_on_drop(true)
            .output()
            .await
            .expect("run aws")
    }

    pub async fn aws_ok(&self, args: &[&str]) -> String {
        let out = self.aws(args).await;
        assert!(
            out.status.success(),
            "aws {args:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the endpoint and checks that `serve` returned cleanly.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let r = tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("serve returns after shutdown");
            r.unwrap().unwrap();
        }
    }
}

/// Every regular file below `dir`, as sorted relative paths.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                walk(base, &e.path(), out);
            } else {
                out.push(e.path().strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
