//! A fake Kubernetes API server and a fake kubelet for the tests of the `kubernetes` executor.
//!
//! # API server
//!
//! HTTPS on `127.0.0.1:<free port>` ([`FakeKube::url`]; a CA of its own, [`FakeKube::ca_pem`],
//! made with `openssl`: kubectl sends no bearer token over plain HTTP), one namespace
//! ([`FakeKube::namespace`], default `ims`), a bearer token checked on every request (401
//! `Unauthorized` otherwise). [`FakeKube::kubeconfig`] is a kubeconfig file naming all three (for
//! `KUBECONFIG=` of `ims serve`, `kubectl --kubeconfig`); [`FakeKube::kubectl`] is a ready `kubectl`
//! command with its own discovery cache.
//!
//! * **Discovery**: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/batch`, `/apis/batch/v1` (and the
//!   Istio group when [`KubeBuilder::istio`] is on). Aggregated-discovery `Accept` headers are
//!   answered with plain JSON (`Content-Type: application/json`), which clients fall back to.
//!   `GET /api/v1/namespaces[/<ns>]` shows the one namespace (kubectl asks after a 404). A minimal
//!   `/openapi/v3` says every kind's PATCH takes `fieldValidation`, so `kubectl create` leaves
//!   validation to the server (which does not check unknown fields; schema validation is
//!   `kubernetes-validate`'s job).
//! * **Resources** (namespaced): core `v1` secrets, configmaps, services, persistentvolumeclaims,
//!   pods (and `pods/{name}/log`), events; `batch/v1` jobs; `networking.istio.io/v1beta1`
//!   destinationrules when enabled (otherwise the group answers 404, as without the CRD).
//!   Verbs: create (`POST`; 409 `AlreadyExists`, 422 `Invalid` without a name, `generateName`
//!   honoured, `dryRun` honoured; uid, resourceVersion, creationTimestamp, namespace, generation
//!   filled), get (404 `NotFound`), list (`<Kind>List` with `metadata.resourceVersion`;
//!   `labelSelector` with `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`;
//!   `fieldSelector` `path=v`/`path!=v` on any dotted field such as `metadata.name`), watch,
//!   delete (DeleteOptions in the body or `propagationPolicy` in the query), replace (`PUT`, 409
//!   `Conflict` on a stale `metadata.resourceVersion`) and `PATCH` with a JSON merge patch
//!   (`application/merge-patch+json`; `strategic-merge-patch+json` is applied as a merge patch,
//!   which is what it is for maps; other patch types are 415).
//! * **Watch** (`watch=true`/`1`): JSON lines `{"type":…,"object":…}`. Without `resourceVersion`
//!   (or `0`) the current objects come first as `ADDED` (with `sendInitialEvents=true` followed by
//!   a `BOOKMARK` annotated `k8s.io/initial-events-end`); with one, every event after it from a
//!   bounded event log ([`KubeBuilder::event_log`]). A version older than the log answers as the
//!   real server does: HTTP 200 and one `ERROR` event holding a 410 `Gone` Status ("too old
//!   resource version"), which makes `kube::runtime::watcher` list again. `timeoutSeconds` ends
//!   the stream; `allowWatchBookmarks` adds a `BOOKMARK` every second of silence and one at the
//!   end. One global, increasing resourceVersion counter for all kinds.
//! * **Garbage collection**: an object whose `ownerReferences` name a uid that is gone is
//!   deleted (background); `propagationPolicy=Foreground` keeps the owner (deletionTimestamp,
//!   finalizer `foregroundDeletion`) until its dependents are gone; `Orphan` strips the
//!   references instead. Deleting a Job deletes its pods (their containers stopped gracefully).
//!   Deleting answers the object while it lingers (pods stopping, foreground deletion), else a
//!   `Success` Status with details, as the real server does.
//! * **Errors** have Kubernetes' Status shape (`kind: Status`, `status: Failure`, `message`,
//!   `reason`, `details {name, kind, group}`, `code`).
//! * **Test controls**: [`FakeKube::get`]/[`FakeKube::list`]/[`FakeKube::create`] on the store,
//!   [`FakeKube::requests`] (method, path, query, body of every request),
//!   [`FakeKube::fail`]/[`FakeKube::unfail`] (a resource answers 403 `Forbidden`, or 500).
//!
//! # Fake kubelet (needs root; [`KubeBuilder::no_kubelet`] turns it off)
//!
//! * When a Job appears it gets a Pod `<job>-<5 chars>` after [`KubeBuilder::pod_delay`]: the
//!   template's labels and annotations plus `job-name`, `batch.kubernetes.io/job-name`,
//!   `controller-uid`, `batch.kubernetes.io/controller-uid`, an ownerReference to the Job
//!   (controller), spec from the template, phase `Pending`; the Job gets `status.active=1` and
//!   `startTime`. A failed pod is replaced while the Job's `failed <= backoffLimit`.
//! * The pod's first container is resolved into a [`ContainerLaunch`]: argv = command + args, env
//!   with `secretKeyRef`/`configMapKeyRef`/`fieldRef` (metadata.name, metadata.namespace)
//!   resolved — a missing Secret, ConfigMap or key keeps the pod `Pending` with the container
//!   waiting in `CreateContainerConfigError` (retried, as the real kubelet does); volumes
//!   `persistentVolumeClaim` (the claim must exist, else the pod is unschedulable; its directory
//!   [`FakeKube::pvc_dir`], claim `Bound`), `emptyDir`, `secret` and `configMap` (files) become host
//!   directories under the fake's directory.
//! * **Network**: each running pod is a host of its own, a network namespace `imsk<k>n<i>` with
//!   `10.214.<k>.<10+i>/24` on `eth0`, its veth `imsk<k>n<i>h` on the bridge `imskb<k>` whose
//!   address `10.214.<k>.1` is [`FakeKube::gateway`] (the server under test listens there). No
//!   default route (as in the remote-node rig, `common::nodes`, whose primitives, lock and owner
//!   records this reuses). The pod gets `status.podIP`/`hostIP`; a Service gets a `clusterIP`
//!   (`10.96.<k>.<n>`, not routed) at creation and, when `type: LoadBalancer`,
//!   `status.loadBalancer.ingress=[{ip: <podIP>}]` once a pod its selector matches runs.
//! * **Runtimes** ([`Runtime`]): `Process` runs argv (program `ims` = [`super::ims_bin`]) as root
//!   via `ip netns exec <ns> unshare --mount --pid --fork --kill-child --mount-proc`, each mount
//!   bound at its container path (created on the host when missing, as an empty directory), a
//!   clean environment (only the resolved env, plus `PATH` when it has none, as an image's
//!   config would give), cwd `workingDir` or `/`, limited to the
//!   container's capabilities (`setpriv --bounding-set`: the runtime's default set minus `drop`
//!   plus `add`; all when privileged; `--no-new-privs` when `allowPrivilegeEscalation: false`;
//!   seccomp and AppArmor are not applied); `Custom` hands the
//!   launch to a function returning the container's foreground process. stdout and stderr go to
//!   [`FakeKube::pod_log`] (also `GET pods/{name}/log`, with `follow=true` until the container
//!   exits: `kubectl logs [-f]`).
//! * **Phases**: `Pending` → `Running` (Ready) → `Succeeded` (exit 0) / `Failed` (exit ≠ 0,
//!   `terminated.reason: Error`); the Job then gets `succeeded`/`failed` and a `Complete`/`Failed`
//!   (`BackoffLimitExceeded`) condition. `activeDeadlineSeconds` kills the pod (pod reason
//!   `DeadlineExceeded`, Job condition `Failed` reason `DeadlineExceeded`);
//!   `ttlSecondsAfterFinished` deletes a finished Job. Every change is a store update (watchers
//!   see `MODIFIED`).
//! * **Faults** ([`Fault`]) for the next job(s) ([`FakeKube::fault_next`]) or a job id (label
//!   `ims.hpe.com/job-id`, [`FakeKube::fault_job`]): `ImagePull` (waiting `ErrImagePull`, then
//!   `ImagePullBackOff`, never runs), `Unschedulable` (`PodScheduled=False`, reason
//!   `Unschedulable`, a `FailedScheduling` Event). On a running pod: [`FakeKube::evict`] (phase
//!   `Failed`, reason `Evicted`), [`FakeKube::oom_kill`] (SIGKILL, `OOMKilled`, exit code 137).
//! * **Pod deletion**: SIGTERM to the container's PID 1, SIGKILL after
//!   `terminationGracePeriodSeconds` (capped at [`KubeBuilder::max_grace`]); the pod leaves the
//!   store when its process is gone.
//! * **Teardown**: `Drop` kills every container, deletes the namespaces, veths, bridge and the
//!   fake's directory, also when a test panics. A fake whose process died without dropping it is
//!   swept by the next fake (the bridge's alias records the owner, as the rig does).
#![allow(dead_code)]

use super::nodes;
use super::pod::{ContainerLaunch, Mount};
use axum::body::{Body, Bytes};
use axum::extract::State as AxState;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const DEFAULT_NAMESPACE: &str = "ims";
/// The label naming an IMS job (faults by job id).
pub const JOB_ID_LABEL: &str = "ims.hpe.com/job-id";
/// The name of the fake node every pod is scheduled on.
pub const NODE_NAME: &str = "ims-fake-node";
const POD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A resource kind the server knows.
#[derive(Debug)]
struct Res {
    plural: &'static str,
    kind: &'static str,
    group: &'static str,
    version: &'static str,
    short: &'static [&'static str],
}

impl Res {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// `jobs.batch`, `pods`: how the real server names a resource in messages.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

const ISTIO_GROUP: &str = "networking.istio.io";
const RESOURCES: &[Res] = &[
    Res {
        plural: "secrets",
        kind: "Secret",
        group: "",
        version: "v1",
        short: &[],
    },
    Res {
        plural: "configmaps",
        kind: "ConfigMap",
        group: "",
        version: "v1",
        short: &["cm"],
    },
    Res {
        plural: "services",
        kind: "Service",
        group: "",
        version: "v1",
        short: &["svc"],
    },
    Res {
        plural: "persistentvolumeclaims",
        kind: "PersistentVolumeClaim",
        group: "",
        version: "v1",
        short: &["pvc"],
    },
    Res {
        plural: "pods",
        kind: "Pod",
        group: "",
        version: "v1",
        short: &["po"],
    },
    Res {
        plural: "events",
        kind: "Event",
        group: "",
        version: "v1",
        short: &["ev"],
    },
    Res {
        plural: "jobs",
        kind: "Job",
        group: "batch",
        version: "v1",
        short: &[],
    },
    Res {
        plural: "destinationrules",
        kind: "DestinationRule",
        group: ISTIO_GROUP,
        version: "v1beta1",
        short: &["dr"],
    },
];

fn res(plural: &str) -> &'static Res {
    RESOURCES
        .iter()
        .find(|r| r.plural == plural)
        .unwrap_or_else(|| panic!("unknown resource {plural}"))
}

/// A scripted failure of a job's pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The image cannot be pulled: waiting `ErrImagePull`, then `ImagePullBackOff`; never runs.
    ImagePull,
    /// No node fits: `PodScheduled=False` reason `Unschedulable`, a `FailedScheduling` Event.
    Unschedulable,
}

/// A custom runtime: starts the container, returns its foreground process.
pub type Launcher = Arc<dyn Fn(&ContainerLaunch) -> io::Result<Child> + Send + Sync>;

/// What starts a pod's container.
#[derive(Clone)]
pub enum Runtime {
    /// A local process in the pod's network, mount and PID namespaces.
    Process,
    /// The container's foreground process, started by the function (e.g. `podman run`); killing
    /// it stops the container.
    Custom(Launcher),
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The raw query string (percent-encoded).
    pub query: String,
    /// The body, when it is JSON.
    pub body: Option<Value>,
}

impl Request {
    /// A query parameter (decoded).
    pub fn query_param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
    /// A parameter given in the query or as a top-level field of the body (DeleteOptions).
    pub fn param(&self, name: &str) -> Option<String> {
        self.query_param(name).or_else(|| {
            self.body
                .as_ref()?
                .get(name)
                .and_then(|v| v.as_str().map(str::to_string))
        })
    }
}

/// A fake being configured.
pub struct KubeBuilder {
    namespace: String,
    kubelet: bool,
    runtime: Runtime,
    istio: bool,
    event_log: usize,
    pod_delay: Duration,
    max_grace: Duration,
    pull_backoff: Duration,
}

impl Default for KubeBuilder {
    fn default() -> Self {
        KubeBuilder {
            namespace: DEFAULT_NAMESPACE.into(),
            kubelet: true,
            runtime: Runtime::Process,
            istio: false,
            event_log: 10_000,
            pod_delay: Duration::from_millis(100),
            max_grace: Duration::from_secs(3),
            pull_backoff: Duration::from_millis(500),
        }
    }
}

impl KubeBuilder {
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.into();
        self
    }
    /// API server only: Jobs get no pods, nothing needs root.
    pub fn no_kubelet(mut self) -> Self {
        self.kubelet = false;
        self
    }
    pub fn runtime(mut self, r: Runtime) -> Self {
        self.runtime = r;
        self
    }
    /// Serve `networking.istio.io/v1beta1` destinationrules (the CRD is installed).
    pub fn istio(mut self, on: bool) -> Self {
        self.istio = on;
        self
    }
    /// How many watch events are kept for watches resuming from a resourceVersion (default 10000).
    pub fn event_log(mut self, n: usize) -> Self {
        self.event_log = n.max(1);
        self
    }
    /// How long after a Job appears its pod is created (default 100 ms).
    pub fn pod_delay(mut self, d: Duration) -> Self {
        self.pod_delay = d;
        self
    }
    /// The cap on `terminationGracePeriodSeconds` (default 3 s).
    pub fn max_grace(mut self, d: Duration) -> Self {
        self.max_grace = d;
        self
    }

    /// Starts the fake; `None` (reason printed) when the kubelet is on and this is not root.
    /// Panics when it cannot be set up.
    pub fn start(self) -> Option<FakeKube> {
        if self.kubelet && !rustix::process::geteuid().is_root() {
            eprintln!(
                "skipped: the fake kubelet (network namespaces, mounts, processes as root) needs root"
            );
            return None;
        }
        Some(FakeKube::new(self).unwrap_or_else(|e| panic!("fake Kubernetes: {e}")))
    }
}

/// An event of the store, as watches send it.
#[derive(Debug, Clone)]
struct Ev {
    rv: u64,
    plural: &'static str,
    typ: &'static str,
    obj: Value,
}

/// A process as (pid, start time): pids are reused.
type Ident = (u32, u64);

/// A container the kubelet runs.
struct Proc {
    /// The process holding the container (`ip netns exec … unshare`, or the custom runtime's).
    pid: u32,
    /// Its start time (with the pid, what identifies it: pids are reused).
    start: u64,
    /// The container's PID 1 on the host (pid, start time), when it runs in a PID namespace of
    /// its own.
    init: Option<(u32, u64)>,
    /// Why it is being stopped: `Deleted`, `Evicted`, `OOMKilled`, `DeadlineExceeded`.
    stopping: Option<&'static str>,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<(&'static str, String), Value>,
    log: VecDeque<Ev>,
    /// Events up to this version have left the log.
    floor: u64,
    procs: HashMap<String, Proc>,
    failing: HashMap<String, u16>,
    requests: Vec<Request>,
    faults_next: VecDeque<Fault>,
    faults_job: HashMap<String, Fault>,
    /// Faults decided for pods (at their creation).
    pod_faults: HashMap<String, Fault>,
    /// Pods the kubelet has started (or faulted) already.
    handled: HashSet<String>,
    next_cluster_ip: u32,
    /// Pod network slots in use (`i` of `imsk<k>n<i>`) by pod name.
    slots: HashMap<String, usize>,
    /// When the kubelet first saw each Job (by uid).
    job_seen: HashMap<String, Instant>,
    /// Pods whose `ErrImagePull` becomes `ImagePullBackOff` at the time.
    backoffs: Vec<(Instant, String)>,
    /// Threads waiting for containers to exit.
    waiters: Vec<std::thread::JoinHandle<()>>,
}

struct Net {
    k: u8,
}

struct Inner {
    ns: String,
    token: String,
    port: u16,
    dir: PathBuf,
    istio: bool,
    log_cap: usize,
    kubelet: bool,
    runtime: Runtime,
    pod_delay: Duration,
    max_grace: Duration,
    pull_backoff: Duration,
    net: Option<Net>,
    state: Mutex<State>,
    tx: tokio::sync::broadcast::Sender<Ev>,
    stop: tokio::sync::watch::Sender<bool>,
}

/// A running fake API server (and kubelet). See the module's documentation.
pub struct FakeKube {
    inner: Arc<Inner>,
    thread: Option<std::thread::JoinHandle<()>>,
    kubeconfig: PathBuf,
    /// The directory without the kubelet (with it, the network's removal removes `$TMPDIR/ims-kube<k>`).
    _dir: Option<tempfile::TempDir>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// A Kubernetes `Status` of a failure.
pub fn status(code: u16, reason: &str, message: String, details: Option<Value>) -> Value {
    let mut s = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

fn details(r: &Res, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": r.plural});
    if !r.group.is_empty() {
        d["group"] = json!(r.group);
    }
    d
}

fn not_found(r: &Res, name: &str) -> (u16, Value) {
    (
        404,
        status(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", r.qualified()),
            Some(details(r, name)),
        ),
    )
}

/// 5 characters as Kubernetes' name generator picks them.
fn suffix() -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| ALPHA[*b as usize % ALPHA.len()] as char)
        .collect()
}

fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn name_of(obj: &Value) -> String {
    obj["metadata"]["name"].as_str().unwrap_or("").to_string()
}

fn uid_of(obj: &Value) -> String {
    obj["metadata"]["uid"].as_str().unwrap_or("").to_string()
}

// ---------------------------------------------------------------------------------------------
// Selectors

#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// Parses a label selector; `Err` with the reason for a malformed one.
fn parse_label_selector(s: &str) -> Result<Vec<Req>, String> {
    let mut parts = vec![];
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    let valid_key = |k: &str| {
        !k.is_empty()
            && k.len() <= 317
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    };
    let valid_value = |v: &str| {
        v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let set = |v: &str| -> Result<Vec<String>, String> {
        let v = v.trim();
        let inner = v
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .ok_or_else(|| format!("found '{v}', expected: '('"))?;
        let vals: Vec<String> = inner.split(',').map(|x| x.trim().to_string()).collect();
        if vals.iter().any(|x| !valid_value(x)) {
            return Err(format!("invalid value in set {v}"));
        }
        Ok(vals)
    };
    let mut reqs = vec![];
    for p in parts {
        let p = p.trim();
        if p.is_empty() {
            if s.trim().is_empty() {
                continue;
            }
            return Err(format!("found '', expected: identifier in \"{s}\""));
        }
        let req = if let Some(k) = p.strip_prefix('!') {
            Req::NotExists(k.trim().to_string())
        } else if let Some((k, v)) = p.split_once("!=") {
            Req::Ne(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = p.split_once("==") {
            Req::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = p.split_once('=') {
            Req::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = p.split_once(" notin ") {
            Req::NotIn(k.trim().into(), set(v)?)
        } else if let Some((k, v)) = p.split_once(" in ") {
            Req::In(k.trim().into(), set(v)?)
        } else {
            Req::Exists(p.to_string())
        };
        let (key, value) = match &req {
            Req::Eq(k, v) | Req::Ne(k, v) => (k, Some(v)),
            Req::In(k, _) | Req::NotIn(k, _) | Req::Exists(k) | Req::NotExists(k) => (k, None),
        };
        if !valid_key(key) {
            return Err(format!("invalid label key \"{key}\""));
        }
        if let Some(v) = value
            && !valid_value(v)
        {
            return Err(format!("invalid label value: \"{v}\""));
        }
        reqs.push(req);
    }
    Ok(reqs)
}

fn label_match(reqs: &[Req], labels: &BTreeMap<String, String>) -> bool {
    reqs.iter().all(|r| match r {
        Req::Eq(k, v) => labels.get(k) == Some(v),
        Req::Ne(k, v) => labels.get(k) != Some(v),
        Req::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
        Req::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
        Req::Exists(k) => labels.contains_key(k),
        Req::NotExists(k) => !labels.contains_key(k),
    })
}

/// Parses a field selector: `path=v`, `path==v`, `path!=v`, comma-joined.
fn parse_field_selector(s: &str) -> Result<Vec<(String, bool, String)>, String> {
    let mut out = vec![];
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, eq, v) = if let Some((k, v)) = p.split_once("!=") {
            (k, false, v)
        } else if let Some((k, v)) = p.split_once("==") {
            (k, true, v)
        } else if let Some((k, v)) = p.split_once('=') {
            (k, true, v)
        } else {
            return Err(format!("invalid selector: '{p}'; can't understand '{p}'"));
        };
        out.push((k.trim().to_string(), eq, v.trim().to_string()));
    }
    Ok(out)
}

fn field_match(reqs: &[(String, bool, String)], obj: &Value) -> bool {
    reqs.iter().all(|(path, eq, want)| {
        let mut v = obj;
        for part in path.split('.') {
            v = &v[part];
        }
        let got = match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        (got == *want) == *eq
    })
}

struct Selector {
    labels: Vec<Req>,
    fields: Vec<(String, bool, String)>,
}

impl Selector {
    fn matches(&self, obj: &Value) -> bool {
        label_match(&self.labels, &labels_of(obj)) && field_match(&self.fields, obj)
    }
}

/// Whether `selector` (a Service's `spec.selector` map) selects an object with `labels`.
fn map_selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    match selector.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str()),
        _ => false,
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// The store

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn emit(&mut self, inner: &Inner, plural: &'static str, typ: &'static str, obj: Value) {
        let ev = Ev {
            rv: self.rv,
            plural,
            typ,
            obj,
        };
        self.log.push_back(ev.clone());
        while self.log.len() > inner.log_cap {
            if let Some(e) = self.log.pop_front() {
                self.floor = e.rv;
            }
        }
        let _ = inner.tx.send(ev);
    }

    fn get(&self, plural: &'static str, name: &str) -> Option<&Value> {
        self.objects.get(&(plural, name.to_string()))
    }

    fn by_uid(&self, uid: &str) -> Option<(&'static str, String)> {
        self.objects
            .iter()
            .find(|(_, o)| uid_of(o) == uid)
            .map(|(k, _)| k.clone())
    }

    /// Stores a new object (fills the server's fields); the stored object, or the error Status.
    fn create(
        &mut self,
        inner: &Inner,
        plural: &'static str,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Value, (u16, Value)> {
        let r = res(plural);
        if !obj.is_object() {
            return Err((
                400,
                status(
                    400,
                    "BadRequest",
                    "the body of the request is not an object".into(),
                    None,
                ),
            ));
        }
        if let Some(k) = obj["kind"].as_str()
            && k != r.kind
        {
            return Err((
                400,
                status(
                    400,
                    "BadRequest",
                    format!(
                        "the API version in the data ({}) does not match the expected API version ({}) or kind {k} is not {}",
                        obj["apiVersion"].as_str().unwrap_or(""),
                        r.api_version(),
                        r.kind
                    ),
                    None,
                ),
            ));
        }
        obj["kind"] = json!(r.kind);
        obj["apiVersion"] = json!(r.api_version());
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        if let Some(ns) = obj["metadata"]["namespace"].as_str()
            && ns != inner.ns
        {
            return Err((
                400,
                status(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                    None,
                ),
            ));
        }
        let mut name = name_of(&obj);
        if name.is_empty()
            && let Some(g) = obj["metadata"]["generateName"].as_str()
            && !g.is_empty()
        {
            name = format!("{g}{}", suffix());
            obj["metadata"]["name"] = json!(name);
        }
        if name.is_empty() {
            return Err((
                422,
                status(
                    422,
                    "Invalid",
                    format!(
                        "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                        r.kind
                    ),
                    Some(json!({"kind": r.kind, "group": r.group, "causes": [
                        {"reason": "FieldValueRequired", "message": "Required value: name or generateName is required", "field": "metadata.name"}
                    ]})),
                ),
            ));
        }
        let name_ok = name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !name_ok {
            return Err((
                422,
                status(
                    422,
                    "Invalid",
                    format!(
                        "{} \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                        r.kind
                    ),
                    Some(
                        json!({"name": name, "kind": r.kind, "group": r.group, "causes": [
                            {"reason": "FieldValueInvalid", "message": "Invalid value", "field": "metadata.name"}
                        ]}),
                    ),
                ),
            ));
        }
        if self.get(plural, &name).is_some() {
            return Err((
                409,
                status(
                    409,
                    "AlreadyExists",
                    format!("{} \"{name}\" already exists", r.qualified()),
                    Some(details(r, &name)),
                ),
            ));
        }
        if plural == "secrets" {
            // stringData is write-only: merged into data, base64.
            if let Some(sd) = obj.as_object_mut().and_then(|o| o.remove("stringData"))
                && let Some(m) = sd.as_object()
            {
                if !obj["data"].is_object() {
                    obj["data"] = json!({});
                }
                for (k, v) in m {
                    let s = v.as_str().unwrap_or_default();
                    obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(s));
                }
            }
            if let Some(m) = obj["data"].as_object() {
                for (k, v) in m {
                    let ok = v.as_str().is_some_and(|s| {
                        base64::engine::general_purpose::STANDARD.decode(s).is_ok()
                    });
                    if !ok {
                        return Err((
                            400,
                            status(
                                400,
                                "BadRequest",
                                format!(
                                    "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at key {k}"
                                ),
                                None,
                            ),
                        ));
                    }
                }
            }
            if obj["type"].is_null() {
                obj["type"] = json!("Opaque");
            }
        }
        if dry_run {
            return Ok(obj);
        }
        self.rv += 1;
        let md = &mut obj["metadata"];
        md["namespace"] = json!(inner.ns);
        md["uid"] = json!(uuid::Uuid::new_v4().to_string());
        md["resourceVersion"] = json!(self.rv.to_string());
        md["creationTimestamp"] = json!(now());
        md["generation"] = json!(1);
        if let Some(m) = md.as_object_mut() {
            m.remove("deletionTimestamp");
        }
        match plural {
            "services" => {
                if obj["spec"]["clusterIP"].as_str().unwrap_or("").is_empty() {
                    self.next_cluster_ip += 1;
                    let k = inner.net.as_ref().map_or(0, |n| n.k);
                    let n = self.next_cluster_ip;
                    let ip = format!("10.96.{k}.{}", n % 250 + 1);
                    obj["spec"]["clusterIP"] = json!(ip);
                    obj["spec"]["clusterIPs"] = json!([ip]);
                }
                if obj["spec"]["type"].is_null() {
                    obj["spec"]["type"] = json!("ClusterIP");
                }
                obj["status"] = json!({"loadBalancer": {}});
            }
            "jobs" => {
                let uid = uid_of(&obj);
                let spec = &mut obj["spec"];
                for (k, v) in [("parallelism", 1), ("completions", 1), ("backoffLimit", 6)] {
                    if spec[k].is_null() {
                        spec[k] = json!(v);
                    }
                }
                if spec["template"]["metadata"]["labels"].is_null() {
                    spec["template"]["metadata"]["labels"] = json!({});
                }
                let tl = &mut spec["template"]["metadata"]["labels"];
                tl["controller-uid"] = json!(uid);
                tl["batch.kubernetes.io/controller-uid"] = json!(uid);
                tl["job-name"] = json!(name);
                tl["batch.kubernetes.io/job-name"] = json!(name);
                spec["selector"] =
                    json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
                obj["status"] = json!({});
            }
            "persistentvolumeclaims" => {
                obj["status"] = json!({"phase": "Pending"});
            }
            "pods" if obj["status"].is_null() => {
                obj["status"] = json!({"phase": "Pending", "qosClass": "Burstable"});
            }
            _ => {}
        }
        self.objects.insert((plural, name), obj.clone());
        self.emit(inner, plural, "ADDED", obj.clone());
        Ok(obj)
    }

    /// Changes a stored object with `f` (a new resourceVersion, a `MODIFIED` event); whether it exists.
    fn update(
        &mut self,
        inner: &Inner,
        plural: &'static str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let mut obj = self.get(plural, name)?.clone();
        let before = obj.clone();
        f(&mut obj);
        if obj == before {
            return Some(obj);
        }
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert((plural, name.to_string()), obj.clone());
        self.emit(inner, plural, "MODIFIED", obj.clone());
        Some(obj)
    }

    /// Removes an object for good (a `DELETED` event), then collects garbage.
    fn remove(&mut self, inner: &Inner, plural: &'static str, name: &str) -> Option<Value> {
        let mut obj = self.objects.remove(&(plural, name.to_string()))?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.emit(inner, plural, "DELETED", obj.clone());
        if plural == "pods" {
            self.handled.remove(name);
            self.pod_faults.remove(name);
        }
        self.collect_garbage(inner);
        Some(obj)
    }

    /// Deletes an object as the API does: pods with a running container stop first, foreground
    /// deletion waits for dependents, orphaning strips references. `Ok(Some(obj))` while the
    /// object lingers (answered as the object), `Ok(None)` when it is gone.
    fn delete(
        &mut self,
        inner: &Inner,
        plural: &'static str,
        name: &str,
        policy: Option<&str>,
        grace: Option<u64>,
    ) -> Result<Option<Value>, (u16, Value)> {
        let r = res(plural);
        let Some(obj) = self.get(plural, name).cloned() else {
            return Err(not_found(r, name));
        };
        let uid = uid_of(&obj);
        let policy = policy.unwrap_or("Background");
        if !["Foreground", "Background", "Orphan"].contains(&policy) {
            return Err((
                422,
                status(
                    422,
                    "Invalid",
                    format!(
                        "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"{policy}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
                    ),
                    None,
                ),
            ));
        }
        if policy == "Orphan" {
            for key in self.dependents(&uid) {
                let u = uid.clone();
                self.update(inner, key.0, &key.1, |o| {
                    if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"] != json!(u));
                    }
                });
            }
        }
        let already = !obj["metadata"]["deletionTimestamp"].is_null();
        if plural == "pods" && self.procs.contains_key(name) {
            let grace_s = grace
                .or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_u64())
                .unwrap_or(30);
            let o = self.update(inner, plural, name, |o| {
                if o["metadata"]["deletionTimestamp"].is_null() {
                    o["metadata"]["deletionTimestamp"] = json!(now());
                    o["metadata"]["deletionGracePeriodSeconds"] = json!(grace_s);
                }
            });
            if !already && let Some(p) = self.procs.get_mut(name) {
                p.stopping.get_or_insert("Deleted");
                let (pid, init) = ((p.pid, p.start), p.init);
                let cap = inner.max_grace;
                let grace = Duration::from_secs(grace_s).min(cap);
                std::thread::spawn(move || stop_process(pid, init, grace));
            }
            return Ok(o);
        }
        if policy == "Foreground" && !self.dependents(&uid).is_empty() {
            let o = self.update(inner, plural, name, |o| {
                if o["metadata"]["deletionTimestamp"].is_null() {
                    o["metadata"]["deletionTimestamp"] = json!(now());
                    o["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                }
                let f = &mut o["metadata"]["finalizers"];
                if !f.is_array() {
                    *f = json!([]);
                }
                let a = f.as_array_mut().expect("array");
                if !a.contains(&json!("foregroundDeletion")) {
                    a.push(json!("foregroundDeletion"));
                }
            });
            self.collect_garbage(inner);
            // Dependents may all have gone at once.
            return Ok(self.get(plural, name).cloned().or(o));
        }
        self.remove(inner, plural, name);
        Ok(None)
    }

    /// Keys of the objects that name `uid` as an owner.
    fn dependents(&self, uid: &str) -> Vec<(&'static str, String)> {
        if uid.is_empty() {
            return vec![];
        }
        self.objects
            .iter()
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(uid)))
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Deletes dependents of gone owners and of owners in foreground deletion; finishes foreground
    /// deletions whose dependents are gone. Repeats until nothing changes.
    fn collect_garbage(&mut self, inner: &Inner) {
        loop {
            let mut todo: Vec<(&'static str, String)> = vec![];
            let mut finish: Vec<(&'static str, String)> = vec![];
            for (key, o) in &self.objects {
                if let Some(refs) = o["metadata"]["ownerReferences"].as_array()
                    && !refs.is_empty()
                    && o["metadata"]["deletionTimestamp"].is_null()
                {
                    let doomed = refs.iter().all(|r| {
                        let uid = r["uid"].as_str().unwrap_or("");
                        match self.by_uid(uid) {
                            None => true,
                            Some(k) => {
                                let owner = &self.objects[&k];
                                !owner["metadata"]["deletionTimestamp"].is_null()
                                    && owner["metadata"]["finalizers"]
                                        .as_array()
                                        .is_some_and(|f| f.contains(&json!("foregroundDeletion")))
                            }
                        }
                    });
                    if doomed {
                        todo.push(key.clone());
                    }
                }
                if !o["metadata"]["deletionTimestamp"].is_null()
                    && o["metadata"]["finalizers"]
                        .as_array()
                        .is_some_and(|f| f.contains(&json!("foregroundDeletion")))
                    && self.dependents(&uid_of(o)).is_empty()
                {
                    finish.push(key.clone());
                }
            }
            if todo.is_empty() && finish.is_empty() {
                return;
            }
            let mut changed = false;
            for (p, n) in todo {
                let before = self.get(p, &n).cloned();
                let _ = self.delete(inner, p, &n, Some("Background"), None);
                changed |= self.get(p, &n) != before.as_ref();
            }
            for (p, n) in finish {
                if let Some(mut o) = self.objects.remove(&(p, n)) {
                    changed = true;
                    self.rv += 1;
                    if let Some(f) = o["metadata"]["finalizers"].as_array_mut() {
                        f.retain(|x| x != "foregroundDeletion");
                    }
                    o["metadata"]["resourceVersion"] = json!(self.rv.to_string());
                    self.emit(inner, p, "DELETED", o);
                }
            }
            if !changed {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

fn respond(code: u16, v: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

fn err((code, v): (u16, Value)) -> Response {
    respond(code, &v)
}

fn discovery_resources(inner: &Inner, group: &str, version: &str) -> Option<Value> {
    let list: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .filter(|r| r.group != ISTIO_GROUP || inner.istio)
        .flat_map(|r| {
            let mut v = vec![json!({
                "name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": true,
                "kind": r.kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                "shortNames": r.short,
            })];
            if r.plural == "pods" {
                v.push(
                    json!({"name": "pods/log", "singularName": "", "namespaced": true,
                    "kind": "Pod", "verbs": ["get"]}),
                );
            }
            if ["pods", "jobs", "services", "persistentvolumeclaims"].contains(&r.plural) {
                v.push(
                    json!({"name": format!("{}/status", r.plural), "singularName": "",
                    "namespaced": true, "kind": r.kind, "verbs": ["get", "patch", "update"]}),
                );
            }
            v
        })
        .collect();
    if list.is_empty() {
        return None;
    }
    let mut list = list;
    if group.is_empty() {
        list.push(
            json!({"name": "namespaces", "singularName": "namespace", "namespaced": false,
            "kind": "Namespace", "verbs": ["get", "list"], "shortNames": ["ns"]}),
        );
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}

fn namespace_object(inner: &Inner) -> Value {
    json!({"kind": "Namespace", "apiVersion": "v1",
        "metadata": {"name": inner.ns, "uid": "00000000-0000-4000-8000-00000000cafe",
            "resourceVersion": "1", "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"kubernetes.io/metadata.name": inner.ns}},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

/// An OpenAPI v3 document of a group version: per resource, the PATCH of one object with its
/// group-version-kind and the `fieldValidation` parameter (what kubectl looks for).
fn openapi_gv(inner: &Inner, group: &str, version: &str) -> Value {
    let mut paths = serde_json::Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .filter(|r| r.group != ISTIO_GROUP || inner.istio)
    {
        let prefix = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        paths.insert(
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural),
            json!({"patch": {
                "operationId": format!("patch{}", r.kind),
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": r.kind},
                "x-kubernetes-action": "patch",
                "parameters": [
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}}],
                "responses": {"200": {"description": "OK"}}}}),
        );
    }
    json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0-ims-fake"},
        "paths": paths, "components": {}})
}

fn api_group(name: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/{version}"), "version": version});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": [gv.clone()], "preferredVersion": gv})
}

async fn handle(
    AxState(inner): AxState<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let body_json: Option<Value> = serde_json::from_slice(&body).ok();
    inner.lock().requests.push(Request {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        body: body_json.clone(),
    });
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {}", inner.token) {
        return respond(
            401,
            &status(401, "Unauthorized", "Unauthorized".into(), None),
        );
    }
    let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let not_found_path = || {
        respond(
            404,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
                Some(json!({})),
            ),
        )
    };
    if method == Method::GET {
        match seg.as_slice() {
            ["version"] => {
                return respond(
                    200,
                    &json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-ims-fake",
                        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.0",
                        "compiler": "gc", "platform": "linux/amd64"}),
                );
            }
            ["api"] => {
                return respond(
                    200,
                    &json!({"kind": "APIVersions", "versions": ["v1"],
                        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                            "serverAddress": format!("127.0.0.1:{}", inner.port)}]}),
                );
            }
            ["apis"] => {
                let mut groups = vec![api_group("batch", "v1")];
                if inner.istio {
                    groups.push(api_group(ISTIO_GROUP, "v1beta1"));
                }
                return respond(
                    200,
                    &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
                );
            }
            ["api", "v1"] => {
                return respond(200, &discovery_resources(&inner, "", "v1").expect("core"));
            }
            ["apis", "batch"] => return respond(200, &api_group("batch", "v1")),
            ["api", "v1", "namespaces", ns] => {
                if *ns != inner.ns {
                    return respond(
                        404,
                        &status(
                            404,
                            "NotFound",
                            format!("namespaces \"{ns}\" not found"),
                            Some(json!({"name": ns, "kind": "namespaces"})),
                        ),
                    );
                }
                return respond(200, &namespace_object(&inner));
            }
            ["api", "v1", "namespaces"] => {
                let rv = inner.lock().rv;
                return respond(
                    200,
                    &json!({"kind": "NamespaceList", "apiVersion": "v1",
                        "metadata": {"resourceVersion": rv.to_string()}, "items": [namespace_object(&inner)]}),
                );
            }
            // Enough OpenAPI v3 for kubectl to see that the server validates fields itself
            // (`fieldValidation`), so it sends `fieldValidation=Strict` instead of validating
            // against a schema.
            ["openapi", "v3"] => {
                let mut paths = serde_json::Map::new();
                for gv in ["api/v1", "apis/batch/v1"]
                    .into_iter()
                    .chain(inner.istio.then_some("apis/networking.istio.io/v1beta1"))
                {
                    paths.insert(
                        gv.into(),
                        json!({"serverRelativeURL": format!("/openapi/v3/{gv}")}),
                    );
                }
                return respond(200, &json!({"paths": paths}));
            }
            ["openapi", "v3", "api", "v1"] => return respond(200, &openapi_gv(&inner, "", "v1")),
            ["openapi", "v3", "apis", g, v] if discovery_resources(&inner, g, v).is_some() => {
                return respond(200, &openapi_gv(&inner, g, v));
            }
            ["apis", g] if *g == ISTIO_GROUP && inner.istio => {
                return respond(200, &api_group(ISTIO_GROUP, "v1beta1"));
            }
            ["apis", g, v] => {
                return match discovery_resources(&inner, g, v) {
                    Some(d) => respond(200, &d),
                    None => not_found_path(),
                };
            }
            _ => {}
        }
    }
    // Resource paths.
    let (group, version, rest) = match seg.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return not_found_path(),
    };
    let (ns, plural, name, sub) = match rest {
        ["namespaces", ns, p] => (Some(*ns), *p, None, None),
        ["namespaces", ns, p, n] => (Some(*ns), *p, Some(*n), None),
        ["namespaces", ns, p, n, s] => (Some(*ns), *p, Some(*n), Some(*s)),
        [p] => (None, *p, None, None),
        _ => return not_found_path(),
    };
    let Some(r) = RESOURCES.iter().find(|r| {
        r.plural == plural
            && r.group == group
            && r.version == version
            && (r.group != ISTIO_GROUP || inner.istio)
    }) else {
        return not_found_path();
    };
    let verb = match (&method, name, sub) {
        (&Method::GET, None, _)
            if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            "watch"
        }
        (&Method::GET, None, _) => "list",
        (&Method::GET, Some(_), _) => "get",
        (&Method::POST, None, _) => "create",
        (&Method::DELETE, Some(_), None) => "delete",
        (&Method::PUT, Some(_), _) => "update",
        (&Method::PATCH, Some(_), _) => "patch",
        _ => {
            return respond(
                405,
                &status(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource".to_string(),
                    None,
                ),
            );
        }
    };
    // A stalled resource answers nothing until it is un-stalled (a hung API server), then a
    // timeout: the request never takes effect.
    if inner.lock().failing.get(r.plural) == Some(&STALL) {
        while inner.lock().failing.get(r.plural) == Some(&STALL) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        return respond(
            504,
            &status(
                504,
                "Timeout",
                format!("the {verb} of {} timed out", r.qualified()),
                None,
            ),
        );
    }
    let failing = inner.lock().failing.get(r.plural).copied();
    match failing {
        Some(403) => {
            let group_txt = if r.group.is_empty() {
                String::new()
            } else {
                r.group.to_string()
            };
            let msg = format!(
                "{} is forbidden: User \"system:serviceaccount:{ns}:ims\" cannot {verb} resource \"{}\" in API group \"{group_txt}\" in the namespace \"{ns}\"",
                match name {
                    Some(n) => format!("{} \"{n}\"", r.qualified()),
                    None => r.qualified(),
                },
                match sub {
                    Some(s) => format!("{}/{s}", r.plural),
                    None => r.plural.to_string(),
                },
                ns = inner.ns
            );
            let mut d = json!({"kind": r.plural});
            if let Some(n) = name {
                d["name"] = json!(n);
            }
            if !r.group.is_empty() {
                d["group"] = json!(r.group);
            }
            return respond(403, &status(403, "Forbidden", msg, Some(d)));
        }
        Some(code) => {
            return respond(
                code,
                &status(
                    code,
                    "InternalError",
                    format!(
                        "Internal error occurred: injected failure of {}",
                        r.qualified()
                    ),
                    Some(json!({"causes": [{"message": "injected by the test"}]})),
                ),
            );
        }
        None => {}
    }
    let in_ns = ns.is_none_or(|n| n == inner.ns);
    match verb {
        "list" | "watch" => {
            let sel = match selector(&q) {
                Ok(s) => s,
                Err(m) => return respond(400, &status(400, "BadRequest", m, None)),
            };
            if verb == "watch" {
                return watch(inner.clone(), r, sel, &q, in_ns);
            }
            let st = inner.lock();
            let items: Vec<Value> = if in_ns {
                st.objects
                    .iter()
                    .filter(|((p, _), o)| *p == r.plural && sel.matches(o))
                    .map(|(_, o)| o.clone())
                    .collect()
            } else {
                vec![]
            };
            respond(
                200,
                &json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(),
                    "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
            )
        }
        "get" => {
            let name = name.unwrap_or("");
            if sub == Some("log") && r.plural == "pods" {
                return pod_log_response(&inner, name, in_ns, &q);
            }
            if sub.is_some_and(|s| s != "status") {
                return not_found_path();
            }
            match inner.lock().get(r.plural, name) {
                Some(o) if in_ns => respond(200, o),
                _ => err(not_found(r, name)),
            }
        }
        "create" => {
            if !in_ns {
                let n = ns.unwrap_or("");
                return respond(
                    404,
                    &status(
                        404,
                        "NotFound",
                        format!("namespaces \"{n}\" not found"),
                        Some(json!({"name": n, "kind": "namespaces"})),
                    ),
                );
            }
            let Some(obj) = body_json else {
                return respond(
                    400,
                    &status(400, "BadRequest", "the body of the request was in an unknown format - accepted media types include: application/json".into(), None),
                );
            };
            let dry = q.contains_key("dryRun");
            let mut st = inner.lock();
            match st.create(&inner, r.plural, obj, dry) {
                Ok(o) => respond(201, &o),
                Err(e) => err(e),
            }
        }
        "delete" => {
            let name = name.unwrap_or("");
            if !in_ns {
                return err(not_found(r, name));
            }
            let opts = body_json.unwrap_or(json!({}));
            let policy = q
                .get("propagationPolicy")
                .cloned()
                .or_else(|| opts["propagationPolicy"].as_str().map(str::to_string));
            let grace = q
                .get("gracePeriodSeconds")
                .and_then(|g| g.parse().ok())
                .or_else(|| opts["gracePeriodSeconds"].as_u64());
            let mut st = inner.lock();
            let Some(before) = st.get(r.plural, name).cloned() else {
                return err(not_found(r, name));
            };
            if let Some(pre) = opts["preconditions"]["uid"].as_str()
                && pre != uid_of(&before)
            {
                return respond(
                    409,
                    &status(
                        409,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {pre}, UID in object meta: {}",
                            r.qualified(),
                            uid_of(&before)
                        ),
                        Some(details(r, name)),
                    ),
                );
            }
            match st.delete(&inner, r.plural, name, policy.as_deref(), grace) {
                Ok(Some(o)) => respond(200, &o),
                Ok(None) => {
                    let mut d = details(r, name);
                    d["uid"] = json!(uid_of(&before));
                    respond(
                        200,
                        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Success", "details": d}),
                    )
                }
                Err(e) => err(e),
            }
        }
        "update" | "patch" => {
            let name = name.unwrap_or("");
            if !in_ns {
                return err(not_found(r, name));
            }
            let Some(patch) = body_json else {
                return respond(
                    400,
                    &status(
                        400,
                        "BadRequest",
                        "the body of the request is not JSON".into(),
                        None,
                    ),
                );
            };
            let ctype = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if verb == "patch"
                && !ctype.starts_with("application/merge-patch+json")
                && !ctype.starts_with("application/strategic-merge-patch+json")
            {
                return respond(
                    415,
                    &status(
                        415,
                        "UnsupportedMediaType",
                        format!(
                            "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (got {ctype})"
                        ),
                        None,
                    ),
                );
            }
            let mut st = inner.lock();
            let Some(cur) = st.get(r.plural, name).cloned() else {
                return err(not_found(r, name));
            };
            let mut new = cur.clone();
            if verb == "update" {
                if let Some(rv) = patch["metadata"]["resourceVersion"].as_str()
                    && Some(rv) != cur["metadata"]["resourceVersion"].as_str()
                {
                    return respond(
                        409,
                        &status(
                            409,
                            "Conflict",
                            format!(
                                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                                r.qualified()
                            ),
                            Some(details(r, name)),
                        ),
                    );
                }
                new = patch;
                // What the server owns stays the server's.
                for k in [
                    "uid",
                    "creationTimestamp",
                    "namespace",
                    "name",
                    "deletionTimestamp",
                ] {
                    new["metadata"][k] = cur["metadata"][k].clone();
                }
                new["kind"] = cur["kind"].clone();
                new["apiVersion"] = cur["apiVersion"].clone();
                if sub == Some("status") {
                    let status_v = new["status"].clone();
                    new = cur.clone();
                    new["status"] = status_v;
                } else if !new["status"].is_object() || sub.is_none() {
                    new["status"] = cur["status"].clone();
                }
            } else {
                merge_patch(&mut new, &patch);
                for k in [
                    "uid",
                    "creationTimestamp",
                    "namespace",
                    "name",
                    "resourceVersion",
                ] {
                    new["metadata"][k] = cur["metadata"][k].clone();
                }
            }
            if sub.is_none() && new["spec"] != cur["spec"] {
                let g = cur["metadata"]["generation"].as_u64().unwrap_or(1);
                new["metadata"]["generation"] = json!(g + 1);
            }
            let o = st
                .update(&inner, r.plural, name, move |o| *o = new)
                .expect("exists");
            respond(200, &o)
        }
        _ => not_found_path(),
    }
}

fn selector(q: &HashMap<String, String>) -> Result<Selector, String> {
    Ok(Selector {
        labels: parse_label_selector(q.get("labelSelector").map_or("", String::as_str))
            .map_err(|e| format!("unable to parse requirement: {e}"))?,
        fields: parse_field_selector(q.get("fieldSelector").map_or("", String::as_str))?,
    })
}

fn line(typ: &str, obj: &Value) -> Bytes {
    let mut b = serde_json::to_vec(&json!({"type": typ, "object": obj})).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

/// A watch: JSON lines until `timeoutSeconds`, the client leaves, or the fake stops.
fn watch(
    inner: Arc<Inner>,
    r: &'static Res,
    sel: Selector,
    q: &HashMap<String, String>,
    in_ns: bool,
) -> Response {
    let from: Option<u64> = q
        .get("resourceVersion")
        .filter(|v| !v.is_empty())
        .and_then(|v| v.parse().ok());
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let initial_events = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
    let mut first: Vec<Bytes> = vec![];
    let mut sub;
    let mut last_rv;
    let mut seen = Seen {
        sel,
        in_ns,
        names: HashSet::new(),
    };
    {
        let st = inner.lock();
        sub = inner.tx.subscribe();
        last_rv = st.rv;
        seen.names = st
            .objects
            .iter()
            .filter(|((p, _), o)| *p == r.plural && seen.in_ns && seen.sel.matches(o))
            .map(|((_, n), _)| n.clone())
            .collect();
        match from {
            Some(v) if v != 0 && v < st.floor => {
                let gone = line(
                    "ERROR",
                    &status(
                        410,
                        "Expired",
                        format!("too old resource version: {v} ({})", st.floor + 1),
                        None,
                    ),
                );
                let _ = tx.try_send(gone);
                return stream_response(rx);
            }
            Some(v) if v != 0 => {
                // What the selector matched at version v: objects changed since, as the log has
                // them at v (or as their first change after v shows them).
                let after: Vec<&Ev> = st
                    .log
                    .iter()
                    .filter(|e| e.rv > v && e.plural == r.plural)
                    .collect();
                let changed: HashSet<String> = after.iter().map(|e| name_of(&e.obj)).collect();
                seen.names.retain(|n| !changed.contains(n));
                for n in &changed {
                    let at_v = st
                        .log
                        .iter()
                        .rev()
                        .find(|e| e.rv <= v && e.plural == r.plural && name_of(&e.obj) == *n)
                        .or_else(|| {
                            after
                                .iter()
                                .find(|e| name_of(&e.obj) == *n && e.typ != "ADDED")
                                .copied()
                                .filter(|first| {
                                    // Existed at v only if its first change after v is no creation.
                                    after.iter().find(|e| name_of(&e.obj) == *n).map(|e| e.rv)
                                        == Some(first.rv)
                                })
                        });
                    if at_v.is_some_and(|e| e.typ != "DELETED" && seen.sel.matches(&e.obj))
                        && seen.in_ns
                    {
                        seen.names.insert(n.clone());
                    }
                }
                for e in after {
                    if let Some(typ) = seen.pass(e.typ, &e.obj) {
                        first.push(line(typ, &e.obj));
                    }
                }
            }
            _ => {
                for ((p, _), o) in &st.objects {
                    if *p == r.plural && in_ns && seen.sel.matches(o) {
                        first.push(line("ADDED", o));
                    }
                }
            }
        }
    }
    let mut stop = inner.stop.subscribe();
    tokio::spawn(async move {
        for b in first {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let bookmark = |rv: u64, initial_end: bool| {
            let mut md = json!({"resourceVersion": rv.to_string()});
            if initial_end {
                md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            line(
                "BOOKMARK",
                &json!({"kind": r.kind, "apiVersion": r.api_version(), "metadata": md}),
            )
        };
        // A streaming list (`sendInitialEvents=true`) ends its initial events with a bookmark.
        if initial_events && tx.send(bookmark(last_rv, true)).await.is_err() {
            return;
        }
        loop {
            let idle = tokio::time::sleep(Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    if bookmarks {
                        let _ = tx.send(bookmark(last_rv, false)).await;
                    }
                    return;
                }
                _ = stop.changed() => return,
                _ = tx.closed() => return,
                _ = idle, if bookmarks => {
                    if tx.send(bookmark(last_rv, false)).await.is_err() {
                        return;
                    }
                }
                ev = sub.recv() => match ev {
                    Ok(e) => {
                        last_rv = e.rv;
                        if e.plural == r.plural
                            && let Some(typ) = seen.pass(e.typ, &e.obj)
                            && tx.send(line(typ, &e.obj)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx
                            .send(line("ERROR", &status(410, "Expired", "too old resource version: the watch fell behind".into(), None)))
                            .await;
                        return;
                    }
                    Err(_) => return,
                },
            }
        }
    });
    stream_response(rx)
}

/// What a watch with a selector has shown: an object that stops matching is `DELETED` for it,
/// one that starts matching `ADDED`, as the real server does.
struct Seen {
    sel: Selector,
    in_ns: bool,
    names: HashSet<String>,
}

impl Seen {
    /// The event type to send for a store event, if any.
    fn pass(&mut self, typ: &'static str, obj: &Value) -> Option<&'static str> {
        let matches = self.in_ns && self.sel.matches(obj);
        let name = name_of(obj);
        match typ {
            "ADDED" if matches => {
                self.names.insert(name);
                Some("ADDED")
            }
            "MODIFIED" if matches => Some(if self.names.insert(name) {
                "ADDED"
            } else {
                "MODIFIED"
            }),
            "MODIFIED" => self.names.remove(&name).then_some("DELETED"),
            "DELETED" => (self.names.remove(&name) || matches).then_some("DELETED"),
            _ => None,
        }
    }
}

fn stream_response(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, io::Error>(b), rx))
    });
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("response")
}

fn pod_log_response(
    inner: &Arc<Inner>,
    name: &str,
    in_ns: bool,
    q: &HashMap<String, String>,
) -> Response {
    let exists = in_ns && inner.lock().get("pods", name).is_some();
    if !exists {
        return err(not_found(res("pods"), name));
    }
    let path = log_path(&inner.dir, name);
    let Ok(b) = fs::read(&path) else {
        return respond(
            400,
            &status(
                400,
                "BadRequest",
                format!(
                    "container \"{}\" in pod \"{name}\" is waiting to start: ContainerCreating",
                    first_container_name(inner, name)
                ),
                None,
            ),
        );
    };
    if q.get("follow").is_none_or(|v| v != "true") {
        return (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], b).into_response();
    }
    // Follow: what is there, then what comes, until the container has exited.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let (inner, pod) = (inner.clone(), name.to_string());
    let mut stop = inner.stop.subscribe();
    tokio::spawn(async move {
        let mut sent = b.len();
        if tx.send(Bytes::from(b)).await.is_err() {
            return;
        }
        loop {
            let running = inner.lock().procs.contains_key(&pod);
            if let Ok(all) = fs::read(&path)
                && all.len() > sent
            {
                let more = Bytes::copy_from_slice(&all[sent..]);
                sent = all.len();
                if tx.send(more).await.is_err() {
                    return;
                }
            }
            if !running {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, io::Error>(b), rx))
    });
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(stream))
        .expect("response")
}

fn first_container_name(inner: &Inner, pod: &str) -> String {
    inner
        .lock()
        .get("pods", pod)
        .and_then(|p| {
            p["spec"]["containers"][0]["name"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn log_path(dir: &Path, pod: &str) -> PathBuf {
    dir.join("logs").join(format!("{pod}.log"))
}

// ---------------------------------------------------------------------------------------------
// Network (names and subnet apart from the remote-node rig's `imsbr<k>`/10.213.<k>.0/24)

/// The code in `failing` of a stalled resource (see [`FakeKube::stall`]).
const STALL: u16 = 0;

/// The fake's network: `imskb<k>`, `imsk<k>n<i>`, `10.214.<k>.0/24`, `$TMPDIR/ims-kube<k>`.
const NET: nodes::TestNet = nodes::TestNet {
    bridge: "imskb",
    host: "imsk",
    dir: "ims-kube",
    octet: 214,
    what: "fake Kubernetes",
};
/// Pods running at once (addresses `.10` to `.249`).
const MAX_PODS: usize = 240;

/// Removes the fakes of dead processes (under the rigs' lock); their numbers.
pub fn sweep() -> io::Result<Vec<u8>> {
    sweep_locked(&nodes::RigLock::acquire()?)
}

/// [`sweep`] for a caller holding the rigs' lock already.
pub fn sweep_locked(lock: &nodes::RigLock) -> io::Result<Vec<u8>> {
    NET.sweep(lock)
}

// ---------------------------------------------------------------------------------------------
// Fake kubelet

/// What runs as the container's PID 1 before exec'ing its argv (in its private mount namespace):
/// `<host dir> <container path> <ro|rw>`… `--` `<cwd>` `<setpriv options or ->` argv…
const POD_INIT: &str = r#"set -eu
while [ "$1" != -- ]; do
  src=$1 dst=$2 mode=$3
  shift 3
  # A directory on a directory; a file or device (a hostPath such as /dev/net/tun) on a file.
  if [ -d "$src" ]; then
    /bin/mkdir -p -- "$dst"
  elif [ ! -e "$dst" ]; then
    /bin/mkdir -p -- "$(dirname -- "$dst")"
    : > "$dst"
  fi
  /bin/mount --bind -- "$src" "$dst"
  if [ "$mode" = ro ]; then /bin/mount -o remount,bind,ro -- "$dst"; fi
done
shift
cd -- "$1"
caps=$2
shift 2
if [ "$caps" = - ]; then exec "$@"; fi
exec /usr/bin/setpriv $caps -- "$@"
"#;

/// The capabilities a container runtime gives a non-privileged container by default
/// (containerd's and CRI-O's list).
const DEFAULT_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// `setpriv` options limiting a container to its capabilities (the bounding set: a root process
/// keeps exactly those across exec), or `-` for a privileged one. `Err` for a malformed name.
fn setpriv_options(l: &ContainerLaunch, no_new_privs: bool) -> io::Result<String> {
    if l.privileged {
        return Ok("-".into());
    }
    let norm = |c: &String| -> io::Result<String> {
        let c = c.trim().to_ascii_uppercase();
        let c = c.strip_prefix("CAP_").unwrap_or(&c).to_string();
        if c.is_empty() || !c.chars().all(|x| x.is_ascii_uppercase() || x == '_') {
            return Err(other(format!("capability {c:?}")));
        }
        Ok(c)
    };
    let drop: Vec<String> = l.cap_drop.iter().map(norm).collect::<io::Result<_>>()?;
    let mut set: Vec<String> = if drop.iter().any(|c| c == "ALL") {
        vec![]
    } else {
        DEFAULT_CAPS
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    for c in &l.cap_add {
        let c = norm(c)?;
        if c == "ALL" {
            return Ok(if no_new_privs {
                "--no-new-privs".into()
            } else {
                "-".into()
            });
        }
        if !set.contains(&c) {
            set.push(c);
        }
    }
    let mut opts = String::from("--bounding-set -all");
    for c in &set {
        opts.push_str(&format!(",+{}", c.to_ascii_lowercase()));
    }
    if no_new_privs {
        opts.push_str(" --no-new-privs");
    }
    Ok(opts)
}

/// A pod the kubelet can start now.
struct Start {
    pod: String,
    slot: usize,
    launch: ContainerLaunch,
    /// `allowPrivilegeEscalation: false`.
    no_new_privs: bool,
}

/// Why a pod cannot start (yet).
enum Blocked {
    /// The container's config cannot be made (`CreateContainerConfigError`, `ContainerCreating`).
    Config { reason: String, message: String },
    /// The scheduler finds no node (a missing claim).
    Unschedulable(String),
}

fn b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// Safe relative path (subPath, item keys): no `..`, not absolute.
fn relative_ok(p: &str) -> bool {
    !p.starts_with('/')
        && Path::new(p)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

impl Inner {
    fn pod_dir(&self, pod: &str) -> PathBuf {
        self.dir.join("pods").join(pod)
    }

    /// Resolves the first container of `pod` (env, volumes) against the store.
    fn resolve(&self, st: &State, pod: &Value, ip: Ipv4Addr) -> Result<ContainerLaunch, Blocked> {
        let pname = name_of(pod);
        let spec = &pod["spec"];
        let c = &spec["containers"][0];
        let cfg = |m: String| Blocked::Config {
            reason: "CreateContainerConfigError".into(),
            message: m,
        };
        let data_of = |plural: &'static str, name: &str| -> Option<BTreeMap<String, Vec<u8>>> {
            let o = st.get(plural, name)?;
            let mut m = BTreeMap::new();
            if let Some(d) = o["data"].as_object() {
                for (k, v) in d {
                    let bytes = if plural == "secrets" {
                        b64(v.as_str().unwrap_or(""))?
                    } else {
                        v.as_str().unwrap_or("").as_bytes().to_vec()
                    };
                    m.insert(k.clone(), bytes);
                }
            }
            if let Some(d) = o["binaryData"].as_object() {
                for (k, v) in d {
                    m.insert(k.clone(), b64(v.as_str().unwrap_or(""))?);
                }
            }
            Some(m)
        };
        let ns = &self.ns;
        let mut env: Vec<(String, String)> = vec![];
        for ef in c["envFrom"].as_array().into_iter().flatten() {
            let (plural, r, what) = if ef["secretRef"].is_object() {
                ("secrets", &ef["secretRef"], "secret")
            } else {
                ("configmaps", &ef["configMapRef"], "configmap")
            };
            let name = r["name"].as_str().unwrap_or("");
            match data_of(plural, name) {
                Some(d) => {
                    let prefix = ef["prefix"].as_str().unwrap_or("");
                    for (k, v) in d {
                        env.push((
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v).into_owned(),
                        ));
                    }
                }
                None if r["optional"] == json!(true) => {}
                None => return Err(cfg(format!("{what} \"{name}\" not found"))),
            }
        }
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap_or("").to_string();
            let vf = &e["valueFrom"];
            let value = if !vf.is_object() {
                e["value"].as_str().unwrap_or("").to_string()
            } else if vf["secretKeyRef"].is_object() || vf["configMapKeyRef"].is_object() {
                let secret = vf["secretKeyRef"].is_object();
                let (r, plural, what, kind) = if secret {
                    (&vf["secretKeyRef"], "secrets", "secret", "Secret")
                } else {
                    (
                        &vf["configMapKeyRef"],
                        "configmaps",
                        "configmap",
                        "ConfigMap",
                    )
                };
                let (on, key) = (
                    r["name"].as_str().unwrap_or(""),
                    r["key"].as_str().unwrap_or(""),
                );
                let optional = r["optional"] == json!(true);
                match data_of(plural, on) {
                    None if optional => continue,
                    None => return Err(cfg(format!("{what} \"{on}\" not found"))),
                    Some(d) => match d.get(key) {
                        Some(v) => String::from_utf8(v.clone()).map_err(|_| {
                            cfg(format!("key {key} of {kind} {ns}/{on} is not UTF-8"))
                        })?,
                        None if optional => continue,
                        None => {
                            return Err(cfg(format!(
                                "couldn't find key {key} in {kind} {ns}/{on}"
                            )));
                        }
                    },
                }
            } else if let Some(fp) = vf["fieldRef"]["fieldPath"].as_str() {
                match fp {
                    "metadata.name" => pname.clone(),
                    "metadata.namespace" => ns.clone(),
                    "metadata.uid" => uid_of(pod),
                    "spec.nodeName" => NODE_NAME.into(),
                    "status.podIP" => ip.to_string(),
                    "status.hostIP" => ip.to_string(),
                    other => {
                        return Err(cfg(format!("unsupported fieldPath {other} (fake kubelet)")));
                    }
                }
            } else {
                return Err(cfg(format!(
                    "env {name}: unsupported valueFrom (fake kubelet)"
                )));
            };
            env.push((name, value));
        }
        // Volumes: name → host directory.
        let mut vols: HashMap<String, PathBuf> = HashMap::new();
        for v in spec["volumes"].as_array().into_iter().flatten() {
            let vname = v["name"].as_str().unwrap_or("").to_string();
            if !relative_ok(&vname) {
                return Err(cfg(format!("volume name {vname:?}")));
            }
            let own = self.pod_dir(&pname).join("volumes").join(&vname);
            let mk =
                |p: &Path| fs::create_dir_all(p).map_err(|e| cfg(format!("{}: {e}", p.display())));
            let dir = if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                if st.get("persistentvolumeclaims", claim).is_none() || !relative_ok(claim) {
                    return Err(Blocked::Unschedulable(format!(
                        "0/1 nodes are available: persistentvolumeclaim \"{claim}\" not found. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
                    )));
                }
                let d = self.dir.join("pvc").join(claim);
                mk(&d)?;
                d
            } else if v["emptyDir"].is_object() {
                mk(&own)?;
                own
            } else if let Some(host) = v["hostPath"]["path"].as_str() {
                PathBuf::from(host)
            } else if v["secret"].is_object() || v["configMap"].is_object() {
                let (plural, r, key, what) = if v["secret"].is_object() {
                    ("secrets", &v["secret"], "secretName", "secret")
                } else {
                    ("configmaps", &v["configMap"], "name", "configmap")
                };
                let on = r[key].as_str().unwrap_or("");
                let Some(d) = data_of(plural, on) else {
                    return Err(Blocked::Config {
                        reason: "ContainerCreating".into(),
                        message: format!(
                            "MountVolume.SetUp failed for volume \"{vname}\" : {what} \"{on}\" not found"
                        ),
                    });
                };
                mk(&own)?;
                for (k, bytes) in d {
                    if !relative_ok(&k) {
                        return Err(cfg(format!("key {k:?} is not a file name")));
                    }
                    fs::write(own.join(&k), bytes).map_err(|e| cfg(format!("{k}: {e}")))?;
                }
                own
            } else {
                return Err(cfg(format!(
                    "volume {vname}: unsupported volume type (fake kubelet)"
                )));
            };
            vols.insert(vname, dir);
        }
        let mut mounts = vec![];
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let vname = m["name"].as_str().unwrap_or("");
            let Some(dir) = vols.get(vname) else {
                return Err(cfg(format!("volumeMount {vname}: no such volume")));
            };
            let mut host_dir = dir.clone();
            if let Some(sp) = m["subPath"].as_str().filter(|s| !s.is_empty()) {
                if !relative_ok(sp) {
                    return Err(cfg(format!("subPath {sp:?} is not a relative path")));
                }
                host_dir = host_dir.join(sp);
                fs::create_dir_all(&host_dir).map_err(|e| cfg(e.to_string()))?;
            }
            let path = m["mountPath"].as_str().unwrap_or("");
            if !path.starts_with('/') || path.contains("/../") || path.ends_with("/..") {
                return Err(cfg(format!("mountPath {path:?} is not absolute")));
            }
            mounts.push(Mount {
                host_dir,
                container_path: path.to_string(),
                read_only: m["readOnly"] == json!(true),
            });
        }
        let strs = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        };
        let mut argv = strs(&c["command"]);
        argv.extend(strs(&c["args"]));
        let sc = &c["securityContext"];
        Ok(ContainerLaunch {
            pod: pname.clone(),
            name: c["name"].as_str().unwrap_or("").to_string(),
            image: c["image"].as_str().unwrap_or("").to_string(),
            argv,
            env,
            mounts,
            working_dir: c["workingDir"].as_str().map(str::to_string),
            cap_add: strs(&sc["capabilities"]["add"]),
            cap_drop: strs(&sc["capabilities"]["drop"]),
            privileged: sc["privileged"] == json!(true),
            netns: PathBuf::new(),
            log_file: log_path(&self.dir, &pname),
        })
    }

    /// Records an Event about `obj`.
    fn event(
        &self,
        st: &mut State,
        obj: &Value,
        typ: &str,
        reason: &str,
        message: &str,
        component: &str,
    ) {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let t = now();
        let ev = json!({
            "metadata": {"name": format!("{}.{}", name_of(obj), &id[..16])},
            "involvedObject": {"kind": obj["kind"], "namespace": self.ns, "name": name_of(obj),
                "uid": uid_of(obj), "apiVersion": obj["apiVersion"],
                "resourceVersion": obj["metadata"]["resourceVersion"]},
            "reason": reason, "message": message, "type": typ,
            "source": {"component": component, "host": NODE_NAME},
            "firstTimestamp": t, "lastTimestamp": t, "count": 1,
            "reportingComponent": component, "reportingInstance": NODE_NAME,
        });
        let _ = st.create(self, "events", ev, false);
    }

    fn job_of(&self, st: &State, pod: &Value) -> Option<String> {
        let refs = pod["metadata"]["ownerReferences"].as_array()?;
        let r = refs.iter().find(|r| r["kind"] == "Job")?;
        let (p, n) = st.by_uid(r["uid"].as_str()?)?;
        (p == "jobs").then_some(n)
    }

    /// A pod of a Job ended (`ok`: succeeded); `reason` is a Job failure reason to use.
    fn job_pod_finished(&self, st: &mut State, pod: &Value, ok: bool, reason: Option<&str>) {
        let Some(job) = self.job_of(st, pod) else {
            return;
        };
        let t = now();
        st.update(self, "jobs", &job, |j| {
            let finished = job_finished(j);
            let s = &mut j["status"];
            if let Some(m) = s.as_object_mut() {
                m.remove("active");
                m.insert("ready".into(), json!(0));
            }
            let key = if ok { "succeeded" } else { "failed" };
            let n = s[key].as_u64().unwrap_or(0) + 1;
            s[key] = json!(n);
            if finished {
                return;
            }
            let backoff = j["spec"]["backoffLimit"].as_u64().unwrap_or(6);
            let cond = if ok {
                j["status"]["completionTime"] = json!(t);
                Some(json!({"type": "Complete", "status": "True", "lastProbeTime": t, "lastTransitionTime": t}))
            } else if n > backoff {
                let (reason, message) = match reason {
                    Some("DeadlineExceeded") => ("DeadlineExceeded", "Job was active longer than specified deadline"),
                    _ => ("BackoffLimitExceeded", "Job has reached the specified backoff limit"),
                };
                Some(json!({"type": "Failed", "status": "True", "reason": reason, "message": message, "lastProbeTime": t, "lastTransitionTime": t}))
            } else {
                None
            };
            if let Some(c) = cond {
                push_condition(&mut j["status"], c);
            }
        });
    }

    /// One round of the kubelet (and the Job, TTL and service controllers); pods to start.
    fn tick(&self, st: &mut State) -> Vec<Start> {
        let now_i = Instant::now();
        let now_t = chrono::Utc::now();
        let mut starts = vec![];
        // Jobs.
        let jobs: Vec<Value> = st
            .objects
            .iter()
            .filter(|((p, _), _)| *p == "jobs")
            .map(|(_, o)| o.clone())
            .collect();
        let live: HashSet<String> = jobs.iter().map(uid_of).collect();
        st.job_seen.retain(|u, _| live.contains(u));
        for job in jobs {
            let (jname, juid) = (name_of(&job), uid_of(&job));
            if !job["metadata"]["deletionTimestamp"].is_null() {
                continue;
            }
            if job_finished(&job) {
                if let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_i64() {
                    let done = job["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| parse_time(c["lastTransitionTime"].as_str()?))
                        .max();
                    if done.is_some_and(|d| now_t >= d + chrono::Duration::seconds(ttl)) {
                        let _ = st.delete(self, "jobs", &jname, Some("Background"), None);
                    }
                }
                continue;
            }
            let pods: Vec<Value> = st
                .objects
                .iter()
                .filter(|((p, _), o)| {
                    *p == "pods"
                        && o["metadata"]["ownerReferences"]
                            .as_array()
                            .is_some_and(|r| r.iter().any(|r| r["uid"] == json!(juid)))
                })
                .map(|(_, o)| o.clone())
                .collect();
            let active: Vec<&Value> = pods
                .iter()
                .filter(|p| {
                    matches!(p["status"]["phase"].as_str(), Some("Pending" | "Running"))
                        && p["metadata"]["deletionTimestamp"].is_null()
                })
                .collect();
            // activeDeadlineSeconds.
            if let (Some(ads), Some(start)) = (
                job["spec"]["activeDeadlineSeconds"].as_i64(),
                job["status"]["startTime"].as_str().and_then(parse_time),
            ) && now_t >= start + chrono::Duration::seconds(ads)
            {
                let t = now();
                st.update(self, "jobs", &jname, |j| {
                    push_condition(
                        &mut j["status"],
                        json!({"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                            "message": "Job was active longer than specified deadline",
                            "lastProbeTime": t, "lastTransitionTime": t}),
                    );
                });
                for p in active {
                    let pn = name_of(p);
                    if let Some(pr) = st.procs.get_mut(&pn) {
                        if pr.stopping.is_none() {
                            pr.stopping = Some("DeadlineExceeded");
                            let (pid, init, grace) = ((pr.pid, pr.start), pr.init, self.max_grace);
                            std::thread::spawn(move || stop_process(pid, init, grace));
                        }
                    } else {
                        st.handled.insert(pn.clone());
                        let pod = p.clone();
                        st.update(self, "pods", &pn, |o| {
                            set_terminated(o, "DeadlineExceeded", 137, Some("DeadlineExceeded"));
                        });
                        self.job_pod_finished(st, &pod, false, Some("DeadlineExceeded"));
                    }
                }
                continue;
            }
            let first = *st.job_seen.entry(juid.clone()).or_insert(now_i);
            if active.is_empty() && now_i.duration_since(first) >= self.pod_delay {
                self.create_pod(st, &job);
            }
        }
        // Pods.
        let pending: Vec<Value> = st
            .objects
            .iter()
            .filter(|((p, n), o)| {
                *p == "pods"
                    && !st.handled.contains(n)
                    && o["status"]["phase"] == "Pending"
                    && o["metadata"]["deletionTimestamp"].is_null()
            })
            .map(|(_, o)| o.clone())
            .collect();
        for pod in pending {
            let pn = name_of(&pod);
            match st.pod_faults.get(&pn).copied() {
                Some(Fault::Unschedulable) => {
                    st.handled.insert(pn.clone());
                    self.unschedulable(st, &pod, "0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.");
                    continue;
                }
                Some(Fault::ImagePull) => {
                    st.handled.insert(pn.clone());
                    self.image_pull_fails(st, &pod);
                    continue;
                }
                None => {}
            }
            let used: HashSet<usize> = st.slots.values().copied().collect();
            let Some(slot) = (0..MAX_PODS).find(|i| !used.contains(i)) else {
                self.unschedulable(st, &pod, "0/1 nodes are available: 1 Too many pods.");
                continue;
            };
            let k = self.net.as_ref().map_or(0, |n| n.k);
            match self.resolve(st, &pod, NET.host_addr(k, slot)) {
                Ok(launch) => {
                    st.handled.insert(pn.clone());
                    st.slots.insert(pn.clone(), slot);
                    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
                        if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                            st.update(self, "persistentvolumeclaims", claim, |c| {
                                c["status"]["phase"] = json!("Bound");
                                c["status"]["accessModes"] = c["spec"]["accessModes"].clone();
                                c["status"]["capacity"] =
                                    c["spec"]["resources"]["requests"].clone();
                            });
                        }
                    }
                    let t = now();
                    st.update(self, "pods", &pn, |o| {
                        o["spec"]["nodeName"] = json!(NODE_NAME);
                        o["status"]["conditions"] = json!([
                            {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": t}]);
                        o["status"]["hostIP"] = json!(NET.host_addr(k, slot).to_string());
                        o["status"]["podIP"] = json!(NET.host_addr(k, slot).to_string());
                        o["status"]["podIPs"] = json!([{"ip": NET.host_addr(k, slot).to_string()}]);
                        o["status"]["containerStatuses"] = json!([container_status(o, json!({"waiting": {"reason": "ContainerCreating"}}), false)]);
                    });
                    self.event(
                        st,
                        &pod,
                        "Normal",
                        "Scheduled",
                        &format!("Successfully assigned {}/{pn} to {NODE_NAME}", self.ns),
                        "default-scheduler",
                    );
                    let no_new_privs = pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"]
                        == json!(false);
                    starts.push(Start {
                        pod: pn,
                        slot,
                        launch,
                        no_new_privs,
                    });
                }
                Err(Blocked::Unschedulable(m)) => self.unschedulable(st, &pod, &m),
                Err(Blocked::Config { reason, message }) => {
                    let already = pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
                        == json!(message);
                    if !already {
                        let t = now();
                        st.update(self, "pods", &pn, |o| {
                            o["spec"]["nodeName"] = json!(NODE_NAME);
                            o["status"]["conditions"] = json!([
                                {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": t}]);
                            o["status"]["containerStatuses"] = json!([container_status(o, json!({"waiting": {"reason": reason, "message": message}}), false)]);
                        });
                        let ev_reason = if reason == "ContainerCreating" {
                            "FailedMount"
                        } else {
                            "Failed"
                        };
                        self.event(
                            st,
                            &pod,
                            "Warning",
                            ev_reason,
                            &format!("Error: {message}"),
                            "kubelet",
                        );
                    }
                }
            }
        }
        // LoadBalancer Services get the address of a running pod they select.
        let lbs: Vec<Value> = st
            .objects
            .iter()
            .filter(|((p, _), o)| {
                *p == "services"
                    && o["spec"]["type"] == "LoadBalancer"
                    && o["status"]["loadBalancer"]["ingress"]
                        .as_array()
                        .is_none_or(|a| a.is_empty())
            })
            .map(|(_, o)| o.clone())
            .collect();
        for svc in lbs {
            let ip = st
                .objects
                .iter()
                .filter(|((p, _), o)| *p == "pods" && o["status"]["phase"] == "Running")
                .find(|(_, o)| map_selects(&svc["spec"]["selector"], &labels_of(o)))
                .and_then(|(_, o)| o["status"]["podIP"].as_str().map(str::to_string));
            if let Some(ip) = ip {
                st.update(self, "services", &name_of(&svc), |s| {
                    s["status"]["loadBalancer"]["ingress"] = json!([{"ip": ip, "ipMode": "VIP"}]);
                });
            }
        }
        starts
    }

    fn create_pod(&self, st: &mut State, job: &Value) {
        let (jname, juid) = (name_of(job), uid_of(job));
        let tpl = &job["spec"]["template"];
        let mut labels = tpl["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        labels["job-name"] = json!(jname);
        labels["batch.kubernetes.io/job-name"] = json!(jname);
        labels["controller-uid"] = json!(juid);
        labels["batch.kubernetes.io/controller-uid"] = json!(juid);
        let mut md = json!({
            "name": format!("{jname}-{}", suffix()),
            "generateName": format!("{jname}-"),
            "labels": labels,
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": jname,
                "uid": juid, "controller": true, "blockOwnerDeletion": true}],
        });
        if tpl["metadata"]["annotations"].is_object() {
            md["annotations"] = tpl["metadata"]["annotations"].clone();
        }
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": md, "spec": tpl["spec"],
            "status": {"phase": "Pending", "qosClass": "Burstable"}});
        let Ok(pod) = st.create(self, "pods", pod, false) else {
            return;
        };
        let pn = name_of(&pod);
        let job_id = labels_of(&pod).get(JOB_ID_LABEL).cloned();
        let fault = job_id
            .and_then(|id| st.faults_job.get(&id).copied())
            .or_else(|| st.faults_next.pop_front());
        if let Some(f) = fault {
            st.pod_faults.insert(pn.clone(), f);
        }
        let t = now();
        st.update(self, "jobs", &jname, |j| {
            j["status"]["active"] = json!(1);
            j["status"]["ready"] = json!(0);
            if j["status"]["startTime"].is_null() {
                j["status"]["startTime"] = json!(t);
            }
        });
        self.event(
            st,
            job,
            "Normal",
            "SuccessfulCreate",
            &format!("Created pod: {pn}"),
            "job-controller",
        );
    }

    fn unschedulable(&self, st: &mut State, pod: &Value, message: &str) {
        let pn = name_of(pod);
        if pod["status"]["conditions"][0]["message"] == json!(message) {
            return;
        }
        let t = now();
        st.update(self, "pods", &pn, |o| {
            o["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": message, "lastProbeTime": null,
                "lastTransitionTime": t}]);
        });
        self.event(
            st,
            pod,
            "Warning",
            "FailedScheduling",
            message,
            "default-scheduler",
        );
    }

    fn image_pull_fails(&self, st: &mut State, pod: &Value) {
        let pn = name_of(pod);
        let image = pod["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let msg = format!(
            "failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": {image}: not found"
        );
        let t = now();
        st.update(self, "pods", &pn, |o| {
            o["spec"]["nodeName"] = json!(NODE_NAME);
            o["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": t}]);
            o["status"]["containerStatuses"] = json!([container_status(o, json!({"waiting": {"reason": "ErrImagePull", "message": msg}}), false)]);
        });
        self.event(
            st,
            pod,
            "Normal",
            "Pulling",
            &format!("Pulling image \"{image}\""),
            "kubelet",
        );
        self.event(
            st,
            pod,
            "Warning",
            "Failed",
            &format!("Failed to pull image \"{image}\": {msg}"),
            "kubelet",
        );
        st.backoffs.push((Instant::now() + self.pull_backoff, pn));
    }
}

fn job_finished(job: &Value) -> bool {
    job["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| matches!(c["type"].as_str(), Some("Complete" | "Failed")) && c["status"] == "True")
}

fn push_condition(status: &mut Value, c: Value) {
    if !status["conditions"].is_array() {
        status["conditions"] = json!([]);
    }
    let a = status["conditions"].as_array_mut().expect("array");
    a.retain(|x| x["type"] != c["type"]);
    a.push(c);
}

fn container_status(pod: &Value, state: Value, ready: bool) -> Value {
    let c = &pod["spec"]["containers"][0];
    let running = state["running"].is_object();
    let mut s = json!({
        "name": c["name"], "image": c["image"], "imageID": "", "ready": ready,
        "restartCount": 0, "started": running, "state": state,
        "lastState": {},
    });
    if running || state["terminated"].is_object() {
        s["containerID"] = json!(format!("fake://{}", name_of(pod)));
        s["imageID"] = json!(format!(
            "{}@sha256:{}",
            c["image"].as_str().unwrap_or(""),
            "0".repeat(64)
        ));
    }
    s
}

/// Sets a pod's terminal status: `reason` of the container (`Completed`, `Error`, `OOMKilled`),
/// `pod_reason` (`Evicted`, `DeadlineExceeded`) on the pod.
fn set_terminated(o: &mut Value, reason: &str, code: i32, pod_reason: Option<&str>) {
    let t = now();
    let started = o["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].clone();
    let phase = if code == 0 && pod_reason.is_none() {
        "Succeeded"
    } else {
        "Failed"
    };
    o["status"]["phase"] = json!(phase);
    let ready_reason = if phase == "Succeeded" {
        "PodCompleted"
    } else {
        "PodFailed"
    };
    let mut conds: Vec<Value> = o["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| !matches!(c["type"].as_str(), Some("Ready" | "ContainersReady")))
        .collect();
    for ty in ["ContainersReady", "Ready"] {
        conds.push(json!({"type": ty, "status": "False", "reason": ready_reason, "lastProbeTime": null, "lastTransitionTime": t}));
    }
    o["status"]["conditions"] = json!(conds);
    let mut term = json!({"exitCode": code, "reason": reason, "finishedAt": t,
        "containerID": format!("fake://{}", name_of(o))});
    if !started.is_null() {
        term["startedAt"] = started;
    }
    let cs = container_status(o, json!({"terminated": term}), false);
    o["status"]["containerStatuses"] = json!([cs]);
    match pod_reason {
        Some("Evicted") => {
            o["status"]["reason"] = json!("Evicted");
            o["status"]["message"] = json!("The node was low on resource: memory. ");
        }
        Some("DeadlineExceeded") => {
            o["status"]["reason"] = json!("DeadlineExceeded");
            o["status"]["message"] =
                json!("Pod was active on the node longer than the specified deadline");
        }
        _ => {}
    }
}

/// SIGTERM to the container's PID 1, SIGKILL after `grace` if it has not exited. Processes are
/// (pid, start time): a process that has gone (and whose pid may be someone else's) is not
/// signalled.
fn stop_process(main: (u32, u64), init: Option<(u32, u64)>, grace: Duration) {
    use rustix::process::Signal;
    let signal = |p: (u32, u64), sig| {
        if nodes::running(p.0, p.1) {
            nodes::kill(p.0, sig);
        }
    };
    signal(init.unwrap_or(main), Signal::TERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !nodes::running(main.0, main.1) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(i) = init {
        signal(i, Signal::KILL);
    }
    signal(main, Signal::KILL);
}

/// The exit code Kubernetes reports: the code, or 128 + the signal.
fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

/// The host pid of the process `unshare --fork` (pid `parent`) started, waiting a little.
fn child_of(parent: u32) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(s) = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            && let Some(c) = s.split_whitespace().next().and_then(|c| c.parse().ok())
        {
            return Some(c);
        }
        if Instant::now() > deadline || nodes::start_time(parent).is_none() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Inner {
    /// Starts a resolved pod (blocking: network, process); its status follows.
    fn start(self: &Arc<Inner>, s: Start) {
        let k = self.net.as_ref().map_or(0, |n| n.k);
        let Start {
            pod,
            slot,
            mut launch,
            no_new_privs,
        } = s;
        let result = (|| -> io::Result<(Child, Option<(u32, u64)>)> {
            if *self.stop.borrow() {
                return Err(other("the fake is stopping".into()));
            }
            NET.add_host(k, slot)?;
            launch.netns = PathBuf::from("/run/netns").join(NET.ns_name(k, slot));
            if let Some(d) = launch.log_file.parent() {
                fs::create_dir_all(d)?;
            }
            match &self.runtime {
                Runtime::Custom(f) => Ok((f(&launch)?, None)),
                Runtime::Process => {
                    let log = fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&launch.log_file)?;
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", &NET.ns_name(k, slot)]).args([
                        "unshare",
                        "--mount",
                        "--pid",
                        "--fork",
                        "--kill-child",
                        "--mount-proc",
                        "--propagation",
                        "private",
                        "/bin/sh",
                        "-c",
                        POD_INIT,
                        "ims-pod-init",
                    ]);
                    for m in &launch.mounts {
                        c.arg(&m.host_dir)
                            .arg(&m.container_path)
                            .arg(if m.read_only { "ro" } else { "rw" });
                    }
                    c.arg("--")
                        .arg(launch.working_dir.as_deref().unwrap_or("/"));
                    c.arg(setpriv_options(&launch, no_new_privs)?);
                    for (i, a) in launch.argv.iter().enumerate() {
                        if i == 0 && a == "ims" {
                            c.arg(super::ims_bin());
                        } else {
                            c.arg(a);
                        }
                    }
                    if launch.argv.is_empty() {
                        return Err(other("the container has no command (the Process runtime has no image entrypoint)".into()));
                    }
                    // `ip` and `unshare` need a PATH; the container gets only its own env.
                    let has_path = launch.env.iter().any(|(k, _)| k == "PATH");
                    c.env_clear()
                        .envs(launch.env.iter().map(|(k, v)| (k, v)))
                        .current_dir("/")
                        .stdin(Stdio::null())
                        .stdout(log.try_clone()?)
                        .stderr(log)
                        .process_group(0);
                    if !has_path {
                        // Found by absolute path instead.
                        c.env("PATH", POD_PATH);
                    }
                    let child = c.spawn()?;
                    let init = child_of(child.id()).and_then(|i| Some((i, nodes::start_time(i)?)));
                    Ok((child, init))
                }
            }
        })();
        let mut st = self.lock();
        match result {
            Err(e) => {
                st.slots.remove(&pod);
                drop(st);
                let _ = NET.remove_host(k, slot);
                let mut st = self.lock();
                let msg = format!("failed to start container: {e}");
                if let Some(p) = st.get("pods", &pod).cloned() {
                    st.update(self, "pods", &pod, |o| {
                        set_terminated(o, "StartError", 128, None);
                        o["status"]["containerStatuses"][0]["state"]["terminated"]["message"] =
                            json!(msg);
                    });
                    self.event(
                        &mut st,
                        &p,
                        "Warning",
                        "Failed",
                        &format!("Error: {msg}"),
                        "kubelet",
                    );
                    if !p["metadata"]["deletionTimestamp"].is_null() {
                        st.remove(self, "pods", &pod);
                    } else {
                        self.job_pod_finished(&mut st, &p, false, None);
                    }
                }
            }
            Ok((mut child, init)) => {
                // Not reaped before the waiter below: the start time is there.
                let pid = (child.id(), nodes::start_time(child.id()).unwrap_or(0));
                st.procs.insert(
                    pod.clone(),
                    Proc {
                        pid: pid.0,
                        start: pid.1,
                        init,
                        stopping: None,
                    },
                );
                let gone_or_deleting = st
                    .get("pods", &pod)
                    .is_none_or(|p| !p["metadata"]["deletionTimestamp"].is_null());
                if gone_or_deleting {
                    if let Some(p) = st.procs.get_mut(&pod) {
                        p.stopping = Some("Deleted");
                    }
                    let grace = self.max_grace;
                    std::thread::spawn(move || stop_process(pid, init, grace));
                } else {
                    let t = now();
                    st.update(self, "pods", &pod, |o| {
                        o["status"]["phase"] = json!("Running");
                        o["status"]["startTime"] = json!(t);
                        let mut conds = o["status"]["conditions"].as_array().cloned().unwrap_or_default();
                        for ty in ["Initialized", "ContainersReady", "Ready"] {
                            conds.push(json!({"type": ty, "status": "True", "lastProbeTime": null, "lastTransitionTime": t}));
                        }
                        o["status"]["conditions"] = json!(conds);
                        o["status"]["containerStatuses"] = json!([container_status(o, json!({"running": {"startedAt": t}}), true)]);
                    });
                    if let Some(p) = st.get("pods", &pod).cloned() {
                        if let Some(job) = self.job_of(&st, &p) {
                            st.update(self, "jobs", &job, |j| j["status"]["ready"] = json!(1));
                        }
                        self.event(
                            &mut st,
                            &p,
                            "Normal",
                            "Started",
                            &format!("Started container {}", launch.name),
                            "kubelet",
                        );
                    }
                }
                let me = self.clone();
                let h = std::thread::spawn(move || {
                    let status = child.wait();
                    me.finished(&pod, slot, status);
                });
                st.waiters.push(h);
            }
        }
    }

    /// A container's process ended: the pod's final status, the Job's, the network removed.
    fn finished(&self, pod: &str, slot: usize, status: io::Result<std::process::ExitStatus>) {
        let k = self.net.as_ref().map_or(0, |n| n.k);
        // Stragglers of the pod (a custom runtime's) go with its network.
        let net = NET.remove_host(k, slot);
        let mut st = self.lock();
        st.slots.remove(pod);
        let stopping = st.procs.remove(pod).and_then(|p| p.stopping);
        if let Err(e) = net {
            eprintln!("fake kubelet: removing the network of pod {pod}: {e}");
        }
        let Some(p) = st.get("pods", pod).cloned() else {
            return;
        };
        if !p["metadata"]["deletionTimestamp"].is_null() {
            self.job_pod_finished(&mut st, &p, false, None);
            st.remove(self, "pods", pod);
            return;
        }
        let code = match status {
            Ok(s) => exit_code(s),
            Err(_) => 128,
        };
        let (reason, code, pod_reason) = match stopping {
            Some("OOMKilled") => ("OOMKilled", 137, None),
            Some("Evicted") => ("Error", if code == 0 { 137 } else { code }, Some("Evicted")),
            Some("DeadlineExceeded") => (
                "Error",
                if code == 0 { 137 } else { code },
                Some("DeadlineExceeded"),
            ),
            _ if code == 0 => ("Completed", 0, None),
            _ => ("Error", code, None),
        };
        st.update(self, "pods", pod, |o| {
            set_terminated(o, reason, code, pod_reason)
        });
        if pod_reason == Some("Evicted") {
            self.event(
                &mut st,
                &p,
                "Warning",
                "Evicted",
                "The node was low on resource: memory. ",
                "kubelet",
            );
        }
        let ok = code == 0 && pod_reason.is_none() && reason == "Completed";
        self.job_pod_finished(&mut st, &p, ok, pod_reason);
    }

    /// Image pulls that keep failing: `ErrImagePull` becomes `ImagePullBackOff`.
    fn pull_backoffs(&self, st: &mut State) {
        let now_i = Instant::now();
        let due: Vec<String> = st
            .backoffs
            .iter()
            .filter(|(t, _)| *t <= now_i)
            .map(|(_, p)| p.clone())
            .collect();
        st.backoffs.retain(|(t, _)| *t > now_i);
        for pn in due {
            let Some(pod) = st.get("pods", &pn).cloned() else {
                continue;
            };
            let image = pod["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let msg = format!("Back-off pulling image \"{image}\"");
            st.update(self, "pods", &pn, |o| {
                o["status"]["containerStatuses"] = json!([container_status(
                    o,
                    json!({"waiting": {"reason": "ImagePullBackOff", "message": msg}}),
                    false
                )]);
            });
            self.event(st, &pod, "Normal", "BackOff", &msg, "kubelet");
            self.event(
                st,
                &pod,
                "Warning",
                "Failed",
                "Error: ImagePullBackOff",
                "kubelet",
            );
        }
    }
}

async fn kubelet(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.changed() => return,
        }
        let starts = {
            let mut st = inner.lock();
            inner.pull_backoffs(&mut st);
            inner.tick(&mut st)
        };
        for s in starts {
            let me = inner.clone();
            tokio::task::spawn_blocking(move || me.start(s));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TLS: a CA of the fake's own and a certificate for 127.0.0.1 (made with `openssl`)

/// Makes `<dir>/tls/{ca.pem,server.pem,server.key}`; the acceptor.
fn make_tls(dir: &Path) -> io::Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let t = dir.join("tls");
    fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&t)?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    nodes::run(
        Command::new("openssl")
            .current_dir(&t)
            .args(["req", "-x509"])
            .args(ec)
            .args([
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=ims-fake-kube-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]),
    )?;
    nodes::run(
        Command::new("openssl")
            .current_dir(&t)
            .arg("req")
            .args(ec)
            .args([
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=ims-fake-kube",
            ]),
    )?;
    fs::write(
        t.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    nodes::run(Command::new("openssl").current_dir(&t).args([
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "1",
        "-days",
        "2",
        "-out",
        "server.pem",
        "-extfile",
        "server.ext",
    ]))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(t.join("server.pem"))
        .and_then(|i| i.collect())
        .map_err(|e| other(format!("server.pem: {e}")))?;
    let key = PrivateKeyDer::from_pem_file(t.join("server.key"))
        .map_err(|e| other(format!("server.key: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| other(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| other(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// HTTPS for `axum::serve`: TCP accepted, TLS handshake (bounded), then HTTP/1.1.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (s, a) = match self.tcp.accept().await {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if let Ok(Ok(t)) =
                tokio::time::timeout(Duration::from_secs(5), self.tls.accept(s)).await
            {
                return (t, a);
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

// ---------------------------------------------------------------------------------------------
// The handle

impl FakeKube {
    pub fn builder() -> KubeBuilder {
        KubeBuilder::default()
    }

    /// A fake with the defaults (namespace `ims`, kubelet with the Process runtime); `None` when
    /// not root.
    pub fn start() -> Option<FakeKube> {
        KubeBuilder::default().start()
    }

    fn new(b: KubeBuilder) -> io::Result<FakeKube> {
        let (net, dir, dir_guard) = if b.kubelet {
            let k = NET.allocate()?;
            (Some(Net { k }), NET.dir(k), None)
        } else {
            let t = tempfile::Builder::new().prefix("ims-kube-api").tempdir()?;
            (None, t.path().to_path_buf(), Some(t))
        };
        let cleanup = |e: io::Error| {
            if let Some(n) = &net {
                let _ = NET.remove(n.k);
            }
            e
        };
        let tls = make_tls(&dir).map_err(cleanup)?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(cleanup)?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let (tx, _) = tokio::sync::broadcast::channel(8192);
        let (stop, _) = tokio::sync::watch::channel(false);
        let inner = Arc::new(Inner {
            ns: b.namespace,
            token: uuid::Uuid::new_v4().simple().to_string(),
            port,
            dir: dir.clone(),
            istio: b.istio,
            log_cap: b.event_log,
            kubelet: b.kubelet,
            runtime: b.runtime,
            pod_delay: b.pod_delay,
            max_grace: b.max_grace,
            pull_backoff: b.pull_backoff,
            net,
            state: Mutex::new(State::default()),
            tx,
            stop,
        });
        let kubeconfig = dir.join("kubeconfig");
        let mut fake = FakeKube {
            inner: inner.clone(),
            thread: None,
            kubeconfig: kubeconfig.clone(),
            _dir: dir_guard,
        };
        let ca = fs::read(dir.join("tls/ca.pem"))?;
        let config = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "ims-fake", "cluster": {"server": format!("https://127.0.0.1:{port}"),
                "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(&ca)}}],
            "users": [{"name": "ims-fake", "user": {"token": inner.token}}],
            "contexts": [{"name": "ims-fake", "context": {"cluster": "ims-fake", "user": "ims-fake", "namespace": inner.ns}}],
            "current-context": "ims-fake",
        });
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&kubeconfig)?;
            f.write_all(serde_json::to_string_pretty(&config)?.as_bytes())?;
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("fake-kube")
            .build()?;
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let thread = std::thread::Builder::new()
            .name("fake-kube".into())
            .spawn(move || {
                let mut stop = inner.stop.subscribe();
                rt.block_on(async {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(tcp) => TlsListener { tcp, tls },
                        Err(e) => {
                            eprintln!("fake Kubernetes: {e}");
                            return;
                        }
                    };
                    if inner.kubelet {
                        tokio::spawn(kubelet(inner.clone()));
                    }
                    tokio::select! {
                        r = axum::serve(listener, app) => {
                            if let Err(e) = r {
                                eprintln!("fake Kubernetes: {e}");
                            }
                        }
                        _ = stop.changed() => {}
                    }
                });
                rt.shutdown_timeout(Duration::from_secs(5));
            })?;
        fake.thread = Some(thread);
        Ok(fake)
    }

    /// `https://127.0.0.1:<port>` (the certificate is issued by [`FakeKube::ca_pem`]).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.inner.port)
    }
    /// The PEM file of the CA that issued the server's certificate (also inline in the kubeconfig).
    pub fn ca_pem(&self) -> PathBuf {
        self.inner.dir.join("tls/ca.pem")
    }
    pub fn namespace(&self) -> &str {
        &self.inner.ns
    }
    /// The bearer token the server accepts.
    pub fn token(&self) -> &str {
        &self.inner.token
    }
    /// A kubeconfig (0600) with the server, the token and the namespace as its current context.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }
    /// The fake's directory: `kubeconfig`, `logs/<pod>.log`, `pvc/<claim>/`, `pods/<pod>/volumes/`.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
    /// The host's address on the pods' network (`10.214.<k>.1`): pods reach the server under test
    /// there. `None` without the kubelet.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.inner.net.as_ref().map(|n| NET.gateway(n.k))
    }
    /// The fake's number (`imskb<k>`, `imsk<k>n<i>`, `10.214.<k>.0/24`), with the kubelet.
    pub fn k(&self) -> Option<u8> {
        self.inner.net.as_ref().map(|n| n.k)
    }
    /// The bridge (`imskb<k>`), with the kubelet.
    pub fn bridge(&self) -> Option<String> {
        self.k().map(|k| NET.bridge_name(k))
    }

    /// `kubectl --kubeconfig <ours> --cache-dir <ours>` (add the arguments).
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.inner.dir.join("kubectl-cache"))
            .arg("--request-timeout=20s")
            .stdin(Stdio::null());
        c
    }

    /// Runs `kubectl ARGS` against the fake, which must succeed (the test fails with kubectl's
    /// stderr otherwise); its standard output.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let o = self.kubectl().args(args).output().unwrap();
        assert!(
            o.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// [`FakeKube::kubectl_ok`] with `-o json`; the JSON it printed.
    pub fn kubectl_json(&self, args: &[&str]) -> Value {
        let out = self.kubectl_ok(&[args, &["-o", "json"]].concat());
        serde_json::from_str(&out).unwrap()
    }

    /// An object of a resource (`"jobs"`, `"pods"`, `"services"`…) by name.
    pub fn get(&self, plural: &str, name: &str) -> Option<Value> {
        let r = res(plural);
        self.inner.lock().get(r.plural, name).cloned()
    }
    /// All objects of a resource, by name.
    pub fn list(&self, plural: &str) -> Vec<Value> {
        let r = res(plural);
        self.inner
            .lock()
            .objects
            .iter()
            .filter(|((p, _), _)| *p == r.plural)
            .map(|(_, o)| o.clone())
            .collect()
    }
    /// Creates an object as a client would; the stored object or the error Status.
    pub fn create(&self, plural: &str, obj: Value) -> Result<Value, Value> {
        let r = res(plural);
        let mut st = self.inner.lock();
        st.create(&self.inner, r.plural, obj, false)
            .map_err(|e| e.1)
    }
    /// Deletes an object as a client would (`policy`: Foreground, Background, Orphan).
    pub fn delete(&self, plural: &str, name: &str, policy: Option<&str>) -> Result<(), Value> {
        let r = res(plural);
        let mut st = self.inner.lock();
        st.delete(&self.inner, r.plural, name, policy, None)
            .map(drop)
            .map_err(|e| e.1)
    }
    /// The pods of a Job (by its `job-name` label).
    pub fn pods_of(&self, job: &str) -> Vec<Value> {
        self.list("pods")
            .into_iter()
            .filter(|p| labels_of(p).get("job-name").map(String::as_str) == Some(job))
            .collect()
    }
    /// The current resourceVersion (of the last change).
    pub fn resource_version(&self) -> u64 {
        self.inner.lock().rv
    }
    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.lock().requests.clone()
    }
    pub fn clear_requests(&self) {
        self.inner.lock().requests.clear();
    }
    /// Every request to a resource (`plural`) with `method` (`"DELETE"`…).
    pub fn requests_to(&self, method: &str, plural: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.split('/').any(|s| s == plural))
            .collect()
    }
    /// Makes every request to a resource answer `code`: 403 (`Forbidden`, RBAC missing) or
    /// another (e.g. 500, `InternalError`).
    pub fn fail(&self, plural: &str, code: u16) {
        let r = res(plural);
        self.inner.lock().failing.insert(r.plural.into(), code);
    }
    /// Requests for `plural` get no answer until [`FakeKube::unfail`] (an API server that hangs).
    pub fn stall(&self, plural: &str) {
        let r = res(plural);
        self.inner.lock().failing.insert(r.plural.into(), STALL);
    }
    pub fn unfail(&self, plural: &str) {
        self.inner.lock().failing.remove(plural);
    }
    /// The next `n` pods created for Jobs get `fault` (after the faults queued before).
    pub fn fault_next(&self, fault: Fault, n: usize) {
        let mut st = self.inner.lock();
        for _ in 0..n {
            st.faults_next.push_back(fault);
        }
    }
    /// Every pod of the Job(s) labelled `ims.hpe.com/job-id=<job_id>` gets `fault`.
    pub fn fault_job(&self, job_id: &str, fault: Fault) {
        self.inner.lock().faults_job.insert(job_id.into(), fault);
    }
    /// Evicts a running pod (SIGTERM, SIGKILL after the grace cap): phase `Failed`, reason
    /// `Evicted`. An error when the pod runs no container.
    pub fn evict(&self, pod: &str) -> io::Result<()> {
        let (pid, init) = self.mark_stopping(pod, "Evicted")?;
        let grace = self.inner.max_grace;
        std::thread::spawn(move || stop_process(pid, init, grace));
        Ok(())
    }
    /// Kills a running pod's container as the OOM killer does (SIGKILL): `OOMKilled`, exit code
    /// 137, phase `Failed`. An error when the pod runs no container.
    pub fn oom_kill(&self, pod: &str) -> io::Result<()> {
        let (pid, init) = self.mark_stopping(pod, "OOMKilled")?;
        stop_process(pid, init, Duration::ZERO);
        Ok(())
    }
    fn mark_stopping(&self, pod: &str, why: &'static str) -> io::Result<(Ident, Option<Ident>)> {
        let mut st = self.inner.lock();
        let p = st
            .procs
            .get_mut(pod)
            .ok_or_else(|| other(format!("pod {pod} runs no container")))?;
        if let Some(s) = p.stopping {
            return Err(other(format!("pod {pod} is stopping already ({s})")));
        }
        p.stopping = Some(why);
        Ok(((p.pid, p.start), p.init))
    }
    /// Pods whose container runs now.
    pub fn running_containers(&self) -> Vec<String> {
        self.inner.lock().procs.keys().cloned().collect()
    }
    /// The host pid of a running pod's container (its PID 1 when in a PID namespace of its own).
    pub fn container_pid(&self, pod: &str) -> Option<u32> {
        self.inner
            .lock()
            .procs
            .get(pod)
            .map(|p| p.init.map_or(p.pid, |i| i.0))
    }
    /// What the pod's container wrote (stdout and stderr) so far.
    pub fn pod_log(&self, pod: &str) -> String {
        fs::read(log_path(&self.inner.dir, pod))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
    /// The host directory of a PersistentVolumeClaim (exists once a pod mounted it).
    pub fn pvc_dir(&self, claim: &str) -> PathBuf {
        self.inner.dir.join("pvc").join(claim)
    }
    /// Polls `f` until it gives a value; panics after `timeout` naming `what` (with the objects).
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&FakeKube) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if Instant::now() > deadline {
                let objs: Vec<Value> = self.inner.lock().objects.values().cloned().collect();
                panic!(
                    "fake Kubernetes: timed out after {timeout:?} waiting for {what}; objects:\n{}",
                    serde_json::to_string_pretty(&objs).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    /// The phase of a Job's (latest) pod once it is `phase`; the pod.
    pub fn wait_pod_phase(&self, job: &str, phase: &str, timeout: Duration) -> Value {
        self.wait_for(
            timeout,
            &format!("a pod of job {job} in phase {phase}"),
            |f| {
                f.pods_of(job)
                    .into_iter()
                    .find(|p| p["status"]["phase"] == phase)
            },
        )
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        let _ = self.inner.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Every container dies now; the threads waiting for them finish their pods.
        let procs: Vec<(Ident, Option<Ident>)> = {
            let mut st = self.inner.lock();
            st.procs
                .values_mut()
                .map(|p| {
                    p.stopping.get_or_insert("Deleted");
                    ((p.pid, p.start), p.init)
                })
                .collect()
        };
        for (pid, init) in procs {
            stop_process(pid, init, Duration::ZERO);
        }
        let waiters = std::mem::take(&mut self.inner.lock().waiters);
        for w in waiters {
            let _ = w.join();
        }
        if let Some(n) = &self.inner.net {
            let _lock = nodes::RigLock::acquire();
            if let Err(e) = NET.remove(n.k) {
                eprintln!("fake Kubernetes {}: teardown: {e}", n.k);
            }
        }
    }
}
