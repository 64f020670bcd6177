//! The lifecycle of a job's objects through the Kubernetes API.
//!
//! * `start`: the Secret, the PVC (unless `emptyDir`), the Service, the DestinationRule (if
//!   configured; skipped when the CRD is absent) and then the Job, in that order, so the pod finds
//!   everything it mounts. An object that exists already with this job's label counts as made (a
//!   retried start is idempotent); any other failure deletes what was made and the POST fails.
//! * `finished` (the job reached `success`/`error`): the Service, PVC, Secret and DestinationRule
//!   go, as the original frees its customer-access address and storage; the Job and its pod stay
//!   for `kubectl logs` until `ttlSecondsAfterFinished`.
//! * `stop` (job deleted, or ended by the server): everything, the Job with foreground
//!   propagation (its pod goes first).
//! * The supervisor (on the elected replica only, see [`KubernetesExecutor::supervise`]) watches
//!   the job pods and Services: a pod that cannot run ([`crate::pods::failure`]) ends its job in
//!   `error` with the reason; a Service's load-balancer address becomes the job's
//!   `customer_access`; objects of jobs that ended or were deleted are cleaned up.

use crate::objects::{self, JOB_ID, JOB_TYPE, KubeSettings, Names, ServiceType, job_objects};
use async_trait::async_trait;
use futures::StreamExt as _;
use ims_core::{ConnectionInfo, Job, Timestamp};
use ims_server::executor::{ExecutorContext, ExecutorError, JobExecutor, KUBERNETES};
use k8s_openapi::api::batch::v1::Job as KubeJob;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Client, Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The clients for the cluster: one for requests, which fail when the API server does not answer
/// within the request timeout (job starts, releases and deletions wait on them: a hung API server
/// then fails them with a clear error instead of holding them; kube-rs sets no read timeout by
/// default), and one for watches, without it (watches stay silent for minutes; the watcher has
/// its own idle timeout).
#[derive(Clone)]
pub struct Clients {
    requests: Client,
    watches: Client,
}

/// Clients for the cluster: from `kubeconfig` when given (a server outside the cluster), else
/// the pod's service account (in the cluster), else `KUBECONFIG` or `~/.kube/config`.
pub async fn connect(
    kubeconfig: Option<&Path>,
    request_timeout: Duration,
) -> Result<Clients, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read the kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("the kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            format!("no Kubernetes credentials (not in a pod, and no kubeconfig): {e}")
        })?,
    };
    let client =
        |c| Client::try_from(c).map_err(|e| format!("cannot make a Kubernetes client: {e}"));
    let mut requests = config.clone();
    requests.read_timeout = Some(request_timeout);
    // The timeout counts from the request, not from when its pooled connection went idle.
    requests.reset_reader_on_write = true;
    Ok(Clients {
        requests: client(requests)?,
        watches: client(config)?,
    })
}

/// Every request the executor makes, all in the job namespace: `(API group, resource, verbs)`.
/// The Role in `deploy/kubernetes/role.yaml` grants exactly these (a test checks it).
pub const API_RIGHTS: &[(&str, &str, &[&str])] = &[
    // Created per job; `get`: a retried create finds its own; `list`: the sweep.
    ("", "secrets", &["create", "get", "list", "delete"]),
    (
        "",
        "persistentvolumeclaims",
        &["create", "get", "list", "delete"],
    ),
    // Also watched for the load balancer's address.
    (
        "",
        "services",
        &["create", "get", "list", "watch", "delete"],
    ),
    ("batch", "jobs", &["create", "get", "list", "delete"]),
    // Watched for pods that cannot run.
    ("", "pods", &["list", "watch"]),
    (
        "networking.istio.io",
        "destinationrules",
        &["create", "get", "delete"],
    ),
];

/// How often the supervisor looks at the pods besides reacting to their changes (for pods that
/// stay pending too long).
const TICK: Duration = Duration::from_secs(3);
/// How often objects of jobs that ended or are gone are looked for.
const SWEEP: Duration = Duration::from_secs(60);

pub struct KubernetesExecutor {
    clients: Clients,
    ns: String,
    s: KubeSettings,
    /// A pod may take this long to be scheduled and started.
    pod_timeout: Duration,
    /// Jobs this process is stopping: their pods' end is not a failure.
    stopping: Mutex<HashSet<String>>,
}

fn kube_error(what: &str, e: kube::Error) -> ExecutorError {
    ExecutorError(format!("{what}: {}", describe(&e)))
}

/// A Kubernetes error in one line, with the API's own message.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        e => e.to_string(),
    }
}

fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

fn destination_rules() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1beta1", "DestinationRule"),
        "destinationrules",
    )
}

impl KubernetesExecutor {
    pub fn new(
        clients: Clients,
        namespace: &str,
        s: KubeSettings,
        pod_timeout: Duration,
    ) -> KubernetesExecutor {
        KubernetesExecutor {
            clients,
            ns: namespace.to_string(),
            s,
            pod_timeout,
            stopping: Mutex::new(HashSet::new()),
        }
    }

    /// Whether the job namespace's Jobs can be listed (credentials, RBAC, the API server).
    pub async fn check(&self) -> Result<(), String> {
        self.api::<KubeJob>()
            .list(&ListParams::default().limit(1))
            .await
            .map(drop)
            .map_err(|e| describe(&e))
    }

    /// The job namespace's `K`s, for requests.
    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.clients.requests.clone(), &self.ns)
    }

    /// The job namespace's `K`s, for watches.
    fn watched<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.clients.watches.clone(), &self.ns)
    }

    fn rules(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.clients.requests.clone(),
            &self.ns,
            &destination_rules(),
        )
    }

    /// Creates `obj`; one that exists with job `id`'s label counts as made by us.
    async fn create<K>(&self, api: &Api<K>, obj: &K, id: &str) -> Result<(), kube::Error>
    where
        K: Resource + Clone + DeserializeOwned + Serialize + Debug,
    {
        match api.create(&PostParams::default(), obj).await {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some(409) => {
                let existing = api.get(&obj.name_any()).await?;
                if existing.labels().get(JOB_ID).map(String::as_str) == Some(id) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes `name`; one that is gone already is fine.
    async fn delete<K>(&self, api: Api<K>, name: &str, dp: &DeleteParams) -> Result<(), String>
    where
        K: Resource + Clone + DeserializeOwned + Debug,
    {
        match api.delete(name, dp).await {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some(404) => Ok(()),
            Err(e) => Err(format!("cannot delete {name}: {}", describe(&e))),
        }
    }

    /// Deletes the objects a finished job no longer needs (everything but its Job and pod).
    async fn release(&self, job_id: &str, n: &Names) -> Result<(), String> {
        let dp = DeleteParams::background();
        // At once: the agent's final report waits on this, at most one request timeout.
        let rule = async {
            if !self.s.destination_rule {
                return Ok(());
            }
            match self.rules().delete(&n.service, &dp).await {
                Ok(_) => Ok(()),
                // Gone, or the CRD is not installed.
                Err(e) if code(&e) == Some(404) => Ok(()),
                Err(e) => Err(format!(
                    "cannot delete the DestinationRule {}: {}",
                    n.service,
                    describe(&e)
                )),
            }
        };
        let (service, pvc, secret, rule) = futures::join!(
            self.delete(self.api::<Service>(), &n.service, &dp),
            self.delete(self.api::<PersistentVolumeClaim>(), &n.pvc, &dp),
            self.delete(self.api::<Secret>(), &n.secret, &dp),
            rule,
        );
        let errors: Vec<String> = [service, pvc, secret, rule]
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if errors.is_empty() {
            tracing::debug!(job = %job_id, "released the job's Kubernetes objects");
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Deletes every object of job `id`, all at once (the Job in the foreground: its pod goes
    /// before it).
    async fn remove_all(&self, id: &str, n: &Names) -> Result<(), String> {
        let foreground = DeleteParams::foreground();
        let (job, rest) = futures::join!(
            self.delete(self.api::<KubeJob>(), &n.job, &foreground),
            self.release(id, n),
        );
        match (job, rest) {
            (Ok(()), Ok(())) => Ok(()),
            (a, b) => Err([a.err(), b.err()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ")),
        }
    }

    /// Makes every object of `job`; on a failure, deletes what it made.
    async fn make(&self, cx: &ExecutorContext, job: &Job) -> Result<(), ExecutorError> {
        let token = cx.job_token(&job.id);
        let o = job_objects(cx.settings(), &self.s, job, &token);
        let n = Names::of(job);
        let id = job.id.as_str();
        let undo = |e: ExecutorError| async move {
            if let Err(more) = self.remove_all(id, &n).await {
                tracing::warn!(job = %id, error = %more, "could not remove the objects of a job that failed to start");
            }
            Err(e)
        };
        if let Err(e) = self.create(&self.api::<Secret>(), &o.secret, id).await {
            return undo(kube_error("cannot create the job's Secret", e)).await;
        }
        if let Some(pvc) = &o.pvc
            && let Err(e) = self
                .create(&self.api::<PersistentVolumeClaim>(), pvc, id)
                .await
        {
            return undo(kube_error(
                "cannot create the job's PersistentVolumeClaim",
                e,
            ))
            .await;
        }
        if let Err(e) = self.create(&self.api::<Service>(), &o.service, id).await {
            return undo(kube_error("cannot create the job's Service", e)).await;
        }
        if let Some(rule) = &o.destination_rule {
            let obj: DynamicObject = match serde_json::from_value(rule.clone()) {
                Ok(o) => o,
                Err(e) => {
                    return undo(ExecutorError(format!("the DestinationRule: {e}"))).await;
                }
            };
            match self.create(&self.rules(), &obj, id).await {
                Ok(()) => {}
                Err(e) if code(&e) == Some(404) => {
                    cx.note(job, "Istio's DestinationRule kind is not installed in the cluster: no DestinationRule made").await;
                }
                Err(e) => {
                    return undo(kube_error("cannot create the job's DestinationRule", e)).await;
                }
            }
        }
        if let Err(e) = self.create(&self.api::<KubeJob>(), &o.job, id).await {
            return undo(kube_error("cannot create the Kubernetes Job", e)).await;
        }
        Ok(())
    }

    /// Ends `job` in `error` for `reason` unless it ended already or is being stopped, and frees
    /// its objects; `whole`: the Job too (its pod never ran: it would wait for nothing, holding
    /// its requests, until its deadline). `outside`: the cluster ended the pod (not the agent's
    /// own exit): said in the job's log even when the agent, stopped by it, ended the job first.
    async fn fail(&self, cx: &ExecutorContext, id: &str, reason: &str, outside: bool, whole: bool) {
        if self.stopping.lock().is_ok_and(|s| s.contains(id)) {
            return;
        }
        let Ok(Some(job)) = cx.job(id).await else {
            return;
        };
        if job.status.is_final() {
            // Said once: the run keeps the reason.
            if outside
                && job.status == ims_core::JobStatus::Error
                && let Ok(Some(run)) = cx.run(id).await
                && run.error.is_none()
            {
                cx.note(&job, &format!("error: {reason}")).await;
                let set = |r: &mut ims_core::JobRun| r.error = Some(reason.to_string());
                if let Err(e) = cx.update_run(&job, &set).await {
                    tracing::warn!(job = %id, error = %e, "cannot record why the job's pod ended");
                }
            }
            return;
        }
        cx.fail(&job, reason).await;
        let n = Names::of(&job);
        let r = if whole {
            self.remove_all(id, &n).await
        } else {
            self.release(id, &n).await
        };
        if let Err(e) = r {
            tracing::warn!(job = %id, error = %e, "cannot release the objects of a failed job");
        }
    }

    /// The supervisor: watches job pods and Services while `leader` says this replica leads,
    /// and sweeps objects of ended jobs. Runs until the returned task is aborted.
    pub fn supervise(
        self: &Arc<Self>,
        cx: ExecutorContext,
        mut leader: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                // Until this replica leads (a dropped sender: it never will).
                while !*leader.borrow_and_update() {
                    if leader.changed().await.is_err() {
                        return;
                    }
                }
                tracing::info!(namespace = %me.ns, "watching job pods and Services");
                tokio::select! {
                    _ = me.watch(&cx) => {}
                    _ = async {
                        // Until it no longer leads (a dropped sender: it leads for good).
                        while *leader.borrow_and_update() {
                            if leader.changed().await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        }
                    } => {
                        tracing::info!("no longer the elected replica: not watching job pods");
                    }
                }
            }
        })
    }

    async fn watch(&self, cx: &ExecutorContext) {
        let selector = objects::managed_selector();
        let cfg = watcher::Config::default().labels(&selector);
        let (pods, pod_writer) = reflector::store::<Pod>();
        let (services, service_writer) = reflector::store::<Service>();
        let changed = tokio::sync::Notify::new();
        let pod_events = watcher(self.watched::<Pod>(), cfg.clone())
            .default_backoff()
            .reflect(pod_writer)
            .for_each(|e| {
                if let Err(e) = e {
                    tracing::warn!(error = %e, "watching job pods");
                }
                changed.notify_one();
                async {}
            });
        let service_events = watcher(self.watched::<Service>(), cfg)
            .default_backoff()
            .reflect(service_writer)
            .for_each(|e| {
                if let Err(e) = e {
                    tracing::warn!(error = %e, "watching job Services");
                }
                changed.notify_one();
                async {}
            });
        let judge = async {
            let mut judged = Judged::default();
            let mut published = BTreeMap::new();
            let mut last_sweep: Option<tokio::time::Instant> = None;
            loop {
                tokio::select! {
                    _ = changed.notified() => {}
                    _ = tokio::time::sleep(TICK) => {}
                }
                if pods.wait_until_ready().await.is_err() {
                    return;
                }
                self.judge_pods(cx, &pods.state(), &mut judged).await;
                self.publish_addresses(cx, &services.state(), &mut published)
                    .await;
                if last_sweep.is_none_or(|t| t.elapsed() >= SWEEP) {
                    last_sweep = Some(tokio::time::Instant::now());
                    self.sweep(cx).await;
                }
            }
        };
        tokio::select! {
            _ = pod_events => {}
            _ = service_events => {}
            _ = judge => {}
        }
    }

    /// Pods that cannot run end their jobs; so does a job's pod that vanished while it ran.
    async fn judge_pods(&self, cx: &ExecutorContext, pods: &[Arc<Pod>], j: &mut Judged) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut present: BTreeMap<String, (String, String, bool)> = BTreeMap::new();
        for pod in pods {
            let Some(id) = pod.labels().get(JOB_ID).cloned() else {
                continue;
            };
            let live = crate::pods::is_live(pod);
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            present.insert(uid.clone(), (id.clone(), pod.name_any(), live));
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            // A pod that ended is judged once (it stays until the Job's TTL).
            if !live && !j.ended.insert(uid) {
                continue;
            }
            let age = pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| Duration::from_secs(now.saturating_sub(t.0.as_second()).max(0) as u64))
                .unwrap_or_default();
            if let Some(reason) = crate::pods::failure(pod, age, self.pod_timeout) {
                let pending = crate::pods::is_pending(pod);
                let outside = pending || crate::pods::killed_from_outside(pod);
                self.fail(cx, &id, &reason, outside, pending).await;
            } else if crate::pods::is_pending(pod) {
                self.still_starting(cx, &id).await;
            }
        }
        for (uid, (id, pod, live)) in j.seen.iter() {
            if *live && !present.contains_key(uid) {
                let why = format!("the job's pod {pod} was deleted before the job finished");
                self.fail(cx, id, &why, true, false).await;
            }
        }
        j.seen = present;
    }

    /// A job whose pod is being scheduled or pulled has no agent to heartbeat yet: its silence
    /// counts from now (the pod's own time limit is [`crate::pods::failure`]'s).
    async fn still_starting(&self, cx: &ExecutorContext, id: &str) {
        let Ok(Some(job)) = cx.job(id).await else {
            return;
        };
        if job.status.is_final() {
            return;
        }
        let now = Timestamp::now();
        let stale = |t: Option<Timestamp>| {
            t.is_none_or(|t| (now.0 - t.0).num_seconds() >= 3 * TICK.as_secs() as i64)
        };
        if let Ok(Some(run)) = cx.run(id).await
            && stale(run.launched)
            && let Err(e) = cx
                .update_run(&job, &|r: &mut ims_core::JobRun| r.launched = Some(now))
                .await
        {
            tracing::warn!(job = %id, error = %e, "cannot record that the job's pod is starting");
        }
    }

    /// A Service's load-balancer address becomes its job's `customer_access` (once: `published`
    /// remembers what was written for which Service).
    async fn publish_addresses(
        &self,
        cx: &ExecutorContext,
        services: &[Arc<Service>],
        published: &mut BTreeMap<String, ConnectionInfo>,
    ) {
        let present: HashSet<String> = services
            .iter()
            .filter_map(|s| s.metadata.uid.clone())
            .collect();
        published.retain(|uid, _| present.contains(uid));
        for svc in services {
            let Some(id) = svc.labels().get(JOB_ID) else {
                continue;
            };
            let uid = svc.metadata.uid.clone().unwrap_or_default();
            let Some(host) = external_address(svc, self.s.service_type) else {
                continue;
            };
            let port = match self.s.service_type {
                ServiceType::NodePort => svc
                    .spec
                    .as_ref()
                    .and_then(|s| s.ports.as_ref()?.first()?.node_port)
                    .and_then(|p| u16::try_from(p).ok()),
                _ => Some(objects::SSH_PORT),
            };
            let Some(port) = port else { continue };
            let want = ConnectionInfo { host, port };
            if published.get(&uid) == Some(&want) {
                continue;
            }
            let set = |j: &mut Job| {
                if let Some(c) = j.ssh_containers.as_mut().and_then(|c| c.first_mut())
                    && let Some(info) = c.connection_info.get_mut(ims_core::CUSTOMER_ACCESS)
                    && !j.status.is_final()
                {
                    *info = want.clone();
                }
            };
            match cx.update_job(id, &set).await {
                Ok(_) => {
                    published.insert(uid, want);
                }
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "cannot record the job's external address")
                }
            }
        }
    }

    /// Objects of jobs that ended are released, and those of jobs that are gone removed (a
    /// release or stop that failed, a replica that died in between).
    async fn sweep(&self, cx: &ExecutorContext) {
        let lp = ListParams::default().labels(&objects::managed_selector());
        // Job id → (its type, whether objects other than the Job exist).
        let mut ids: BTreeMap<String, (String, bool)> = BTreeMap::new();
        let mut note = |labels: &BTreeMap<String, String>, is_job: bool| {
            if let (Some(id), Some(t)) = (labels.get(JOB_ID), labels.get(JOB_TYPE)) {
                let e = ids.entry(id.clone()).or_insert_with(|| (t.clone(), false));
                e.1 |= !is_job;
            }
        };
        match self.api::<KubeJob>().list(&lp).await {
            Ok(l) => l.items.iter().for_each(|o| note(o.labels(), true)),
            Err(e) => {
                tracing::warn!(error = %describe(&e), "cannot list job objects");
                return;
            }
        }
        if let Ok(l) = self.api::<Service>().list(&lp).await {
            l.items.iter().for_each(|o| note(o.labels(), false));
        }
        if let Ok(l) = self.api::<Secret>().list(&lp).await {
            l.items.iter().for_each(|o| note(o.labels(), false));
        }
        if let Ok(l) = self.api::<PersistentVolumeClaim>().list(&lp).await {
            l.items.iter().for_each(|o| note(o.labels(), false));
        }
        for (id, (job_type, has_extras)) in ids {
            let job = match cx.job(&id).await {
                Ok(j) => j,
                Err(_) => continue,
            };
            let r = match job {
                None => {
                    tracing::info!(job = %id, "removing the Kubernetes objects of a deleted job");
                    self.remove_all(&id, &Names::from_parts(&id, &job_type))
                        .await
                }
                Some(j) if j.status.is_final() && has_extras => {
                    self.release(&id, &Names::of(&j)).await
                }
                _ => Ok(()),
            };
            if let Err(e) = r {
                tracing::warn!(job = %id, error = %e, "cannot clean up the job's Kubernetes objects");
            }
        }
    }
}

/// What the supervisor remembers of the pods between two looks.
#[derive(Default)]
struct Judged {
    /// Pod uid → its job's id, its name and whether it was pending or running.
    seen: BTreeMap<String, (String, String, bool)>,
    /// Pods that ended and were judged (uids).
    ended: HashSet<String>,
}

/// The address users reach a Service at from outside, once it has one.
fn external_address(svc: &Service, t: ServiceType) -> Option<String> {
    match t {
        ServiceType::LoadBalancer => {
            let ingress = svc
                .status
                .as_ref()?
                .load_balancer
                .as_ref()?
                .ingress
                .as_ref()?
                .first()?
                .clone();
            ingress.ip.or(ingress.hostname).filter(|h| !h.is_empty())
        }
        // Inside the cluster only: its name there.
        ServiceType::ClusterIp => None,
        ServiceType::NodePort => None,
    }
}

/// The executor is shared with its supervisor, so it is used through an `Arc`.
pub struct Kube(pub Arc<KubernetesExecutor>);

#[async_trait]
impl JobExecutor for Kube {
    async fn start(&self, cx: &ExecutorContext, job: &Job) -> Result<(), ExecutorError> {
        let me = &self.0;
        me.make(cx, job).await?;
        let n = Names::of(job);
        let emptydir = me.s.scratch == objects::Scratch::EmptyDir;
        let cluster_only = me.s.service_type == ServiceType::ClusterIp;
        let cfg = cx.settings().clone();
        let record = |j: &mut Job| {
            j.kubernetes_job = Some(n.job.clone());
            j.kubernetes_service = Some(n.service.clone());
            j.kubernetes_secret = Some(n.secret.clone());
            j.kubernetes_configmap = None;
            j.kubernetes_pvc = (!emptydir).then(|| n.pvc.clone());
            if cluster_only
                && let Some(c) = j.ssh_containers.as_mut().and_then(|c| c.first_mut())
                && let Some(info) = c.connection_info.get_mut(ims_core::CUSTOMER_ACCESS)
            {
                // No address outside the cluster: users reach the session by its name inside.
                info.host = ims_server::service::jobs::cluster_host(&cfg, &n.service);
            }
        };
        let run = |r: &mut ims_core::JobRun| {
            r.executor = KUBERNETES.into();
            r.host = None;
            r.launched = Some(Timestamp::now());
        };
        let recorded = async {
            cx.update_job(&job.id, &record).await?;
            cx.update_run(job, &run).await
        }
        .await;
        if let Err(e) = recorded {
            if let Err(more) = me.remove_all(&job.id, &n).await {
                tracing::warn!(job = %job.id, error = %more, "could not remove the objects of a job that failed to start");
            }
            return Err(ExecutorError(format!(
                "cannot record the Kubernetes job: {e}"
            )));
        }
        cx.note(
            job,
            &format!(
                "Kubernetes: Job {} in namespace {} (pod image {}); `kubectl -n {} logs -l job-name={} -c {}` shows its pod's output",
                n.job, me.ns, me.s.image, me.ns, n.job, objects::CONTAINER
            ),
        )
        .await;
        tracing::info!(job = %job.id, kubernetes_job = %n.job, "job started on Kubernetes");
        Ok(())
    }

    async fn finished(&self, cx: &ExecutorContext, job: &Job) -> Result<(), ExecutorError> {
        // The agent ended its job and exits; the Job and pod stay for their logs. A cluster that
        // does not answer now does not fail the agent's report: the sweep releases them later.
        if let Err(e) = self.0.release(&job.id, &Names::of(job)).await {
            tracing::warn!(job = %job.id, error = %e, "cannot release the job's Kubernetes objects now; the next sweep does");
            cx.note(
                job,
                &format!("could not delete the job's Service, PVC and Secret now ({e}); they are deleted within a minute or two"),
            )
            .await;
        }
        Ok(())
    }

    async fn stop(&self, _cx: &ExecutorContext, job: &Job) -> Result<(), ExecutorError> {
        let me = &self.0;
        if let Ok(mut s) = me.stopping.lock() {
            s.insert(job.id.clone());
        }
        let r = me.remove_all(&job.id, &Names::of(job)).await;
        if let Ok(mut s) = me.stopping.lock() {
            s.remove(&job.id);
        }
        r.map_err(ExecutorError)
    }

    fn supervises(&self) -> bool {
        true
    }

    fn takes_overflow(&self) -> bool {
        true
    }

    // `cannot_run` keeps its default (never refuses): the cluster runs every job type; an
    // aarch64 job needs arm64 nodes (or emulation), which only the scheduler knows, and a pod
    // that cannot be placed ends its job with the scheduler's reason.

    fn name(&self) -> &'static str {
        KUBERNETES
    }
}
