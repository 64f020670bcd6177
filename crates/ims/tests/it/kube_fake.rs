//! The fake Kubernetes API server and kubelet (`common::kube`) tested on their own: the Status
//! shapes, selectors, watches, garbage collection, `kubectl` as an independent client, pods run
//! by the fake kubelet (env from a Secret, the claim mounted, the pod's own network), each
//! scripted fault, and the teardown.

use crate::common::kube::{self, FakeKube, Fault, Runtime};
use crate::common::nodes;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// The contract's initial capability list.
const CAPS: [&str; 14] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_CHROOT",
];

/// Raw HTTP against the fake (reqwest on a runtime of its own).
struct Http {
    rt: tokio::runtime::Runtime,
    c: reqwest::Client,
    base: String,
    token: String,
}

impl Http {
    fn new(f: &FakeKube) -> Http {
        Http {
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
            c: reqwest::Client::builder()
                .add_root_certificate(
                    reqwest::Certificate::from_pem(&std::fs::read(f.ca_pem()).unwrap()).unwrap(),
                )
                .build()
                .unwrap(),
            base: f.url(),
            token: f.token().to_string(),
        }
    }

    fn call_with(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let req = self
            .c
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", self.base),
            )
            .bearer_auth(token);
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        self.rt.block_on(async {
            let r = req.send().await.unwrap();
            let code = r.status().as_u16();
            let text = r.text().await.unwrap();
            (
                code,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_with(&self.token.clone(), method, path, body)
    }

    /// Starts a watch (`path` with its query); its events (parsed lines) once `n` arrived, the
    /// stream ended, or `max` passed.
    fn watch(
        &self,
        path: &str,
        n: usize,
        max: Duration,
    ) -> tokio::task::JoinHandle<(u16, Vec<Value>)> {
        let req = self
            .c
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        self.rt.spawn(async move {
            let mut r = req.send().await.unwrap();
            let code = r.status().as_u16();
            let (mut buf, mut out) = (Vec::new(), vec![]);
            let deadline = tokio::time::Instant::now() + max;
            while out.len() < n {
                match tokio::time::timeout_at(deadline, r.chunk()).await {
                    Ok(Ok(Some(b))) => {
                        buf.extend_from_slice(&b);
                        while let Some(i) = buf.iter().position(|&c| c == b'\n') {
                            let line: Vec<u8> = buf.drain(..=i).collect();
                            out.push(serde_json::from_slice(&line).unwrap());
                        }
                    }
                    _ => break,
                }
            }
            (code, out)
        })
    }

    fn join<T>(&self, h: tokio::task::JoinHandle<T>) -> T {
        self.rt.block_on(h).unwrap()
    }
}

fn ns_path(f: &FakeKube, plural: &str) -> String {
    let group = if plural == "jobs" {
        "/apis/batch/v1"
    } else {
        "/api/v1"
    };
    format!("{group}/namespaces/{}/{plural}", f.namespace())
}

/// The labels the executor puts on every object of job `id`.
fn labels(id: &str) -> Value {
    json!({"app.kubernetes.io/name": "ims-job", "app.kubernetes.io/managed-by": "ims-rs",
        "ims.hpe.com/job-id": id, "ims.hpe.com/job-type": "customize"})
}

fn secret(id: &str, token: &str) -> Value {
    use base64::Engine as _;
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": format!("cray-ims-{id}-token"), "labels": labels(id)},
        "data": {"token": base64::engine::general_purpose::STANDARD.encode(token)}})
}

fn pvc(id: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": format!("cray-ims-{id}-job-claim"), "labels": labels(id)},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}}})
}

fn service(id: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("cray-ims-{id}-service"), "labels": labels(id)},
        "spec": {"type": "LoadBalancer", "selector": {"app": format!("ims-{id}-customize")},
            "ports": [{"name": "ssh", "port": 22, "targetPort": 22, "protocol": "TCP"}]}})
}

/// A Job shaped like the executor's (the contract), running `command`.
fn job(id: &str, command: &[&str]) -> Value {
    let mut tl = labels(id);
    tl["app"] = json!(format!("ims-{id}-customize"));
    json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": format!("cray-ims-{id}-customize"), "labels": labels(id)},
        "spec": {"backoffLimit": 0, "activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": tl},
                "spec": {"restartPolicy": "Never", "automountServiceAccountToken": false,
                    "enableServiceLinks": false, "terminationGracePeriodSeconds": 30,
                    "containers": [{"name": "buildenv-sidecar", "image": "registry.local/ims-rs:test",
                        "command": command,
                        "env": [
                            {"name": "PATH", "value": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
                            {"name": "IMS_URL", "value": "http://10.0.0.1:9100"},
                            {"name": "IMS_TOKEN", "valueFrom": {"secretKeyRef": {"name": format!("cray-ims-{id}-token"), "key": "token"}}},
                            {"name": "IMS_AGENT_DIR", "value": "/mnt/image"}],
                        "ports": [{"name": "ssh", "containerPort": 22, "protocol": "TCP"}],
                        "volumeMounts": [{"name": "image-vol", "mountPath": "/mnt/image"}],
                        "securityContext": {"privileged": false, "allowPrivilegeEscalation": true, "runAsUser": 0,
                            "capabilities": {"drop": ["ALL"], "add": CAPS},
                            "seccompProfile": {"type": "Unconfined"}}}],
                    "volumes": [{"name": "image-vol", "persistentVolumeClaim": {"claimName": format!("cray-ims-{id}-job-claim")}}]}}}})
}

fn job_name(id: &str) -> String {
    format!("cray-ims-{id}-customize")
}

/// Secret, claim and Job of `id` in the fake; the Job's name.
fn submit(f: &FakeKube, id: &str, command: &[&str]) -> String {
    f.create("secrets", secret(id, &format!("token-of-{id}")))
        .unwrap();
    f.create("persistentvolumeclaims", pvc(id)).unwrap();
    f.create("jobs", job(id, command)).unwrap();
    job_name(id)
}

fn condition<'a>(obj: &'a Value, ty: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
}

fn api_only() -> FakeKube {
    FakeKube::builder().no_kubelet().start().unwrap()
}

fn assert_status(v: &Value, code: u16, reason: &str) {
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["apiVersion"], "v1", "{v}");
    assert_eq!(v["status"], "Failure", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

#[test]
fn create_get_and_error_statuses() {
    let f = api_only();
    let h = Http::new(&f);
    let p = ns_path(&f, "secrets");
    let (code, s) = h.call("POST", &p, Some(secret("a", "tok")));
    assert_eq!(code, 201, "{s}");
    let md = &s["metadata"];
    assert_eq!(md["namespace"], "ims");
    assert!(
        uuid::Uuid::parse_str(md["uid"].as_str().unwrap()).is_ok(),
        "{s}"
    );
    assert!(
        md["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert!(md["creationTimestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(md["generation"], 1);

    let (code, s) = h.call("POST", &p, Some(secret("a", "tok")));
    assert_eq!(code, 409);
    assert_status(&s, 409, "AlreadyExists");
    assert_eq!(
        s["details"],
        json!({"name": "cray-ims-a-token", "kind": "secrets"})
    );
    assert_eq!(s["message"], "secrets \"cray-ims-a-token\" already exists");

    let (code, s) = h.call("GET", &format!("{}/cray-ims-zz-token", p), None);
    assert_eq!(code, 404);
    assert_status(&s, 404, "NotFound");
    assert_eq!(s["details"]["name"], "cray-ims-zz-token");
    let (code, s) = h.call("GET", &format!("{}/nope", ns_path(&f, "jobs")), None);
    assert_eq!(
        (code, s["message"].as_str()),
        (404, Some("jobs.batch \"nope\" not found"))
    );
    assert_eq!(s["details"]["group"], "batch");

    let (code, s) = h.call(
        "POST",
        &p,
        Some(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {}})),
    );
    assert_eq!(code, 422);
    assert_status(&s, 422, "Invalid");
    let (code, s) = h.call(
        "POST",
        &p,
        Some(json!({"kind": "Secret", "metadata": {"name": "Bad_Name"}})),
    );
    assert_eq!(code, 422, "{s}");
    let (code, s) = h.call(
        "POST",
        &p,
        Some(json!({"kind": "Secret", "metadata": {"name": "x"}, "data": {"k": "not base64!"}})),
    );
    assert_eq!(code, 400, "{s}");
    let (code, s) = h.call(
        "POST",
        &p,
        Some(json!({"kind": "Secret", "metadata": {"generateName": "gen-"}})),
    );
    assert_eq!(code, 201, "{s}");
    assert!(s["metadata"]["name"].as_str().unwrap().starts_with("gen-"));
    // Another namespace does not exist.
    let (code, s) = h.call(
        "POST",
        "/api/v1/namespaces/other/secrets",
        Some(secret("b", "t")),
    );
    assert_eq!(code, 404);
    assert_status(&s, 404, "NotFound");
    // Wrong or no token.
    let (code, s) = h.call_with("wrong", "GET", &p, None);
    assert_eq!(code, 401);
    assert_status(&s, 401, "Unauthorized");
    // An unknown path, and the Istio group without its CRD.
    let (code, _) = h.call("GET", "/apis/networking.istio.io/v1beta1", None);
    assert_eq!(code, 404);
    let (code, s) = h.call(
        "POST",
        "/apis/networking.istio.io/v1beta1/namespaces/ims/destinationrules",
        Some(json!({"metadata": {"name": "x"}})),
    );
    assert_eq!(code, 404);
    assert_status(&s, 404, "NotFound");

    // Injected failures.
    f.fail("jobs", 403);
    let (code, s) = h.call("POST", &ns_path(&f, "jobs"), Some(job("c", &["true"])));
    assert_eq!(code, 403);
    assert_status(&s, 403, "Forbidden");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("cannot create resource \"jobs\" in API group \"batch\""),
        "{s}"
    );
    f.fail("jobs", 500);
    let (code, s) = h.call("GET", &ns_path(&f, "jobs"), None);
    assert_eq!(code, 500);
    assert_status(&s, 500, "InternalError");
    f.unfail("jobs");
    assert_eq!(h.call("GET", &ns_path(&f, "jobs"), None).0, 200);
    assert!(f.get("jobs", &job_name("c")).is_none());

    // Patch and replace.
    let name = "cray-ims-a-token";
    let (code, s) = h.call("GET", &format!("{p}/{name}"), None);
    assert_eq!(code, 200);
    let mut stale = s.clone();
    stale["metadata"]["labels"]["x"] = json!("1");
    let (code, s2) = h.call("PUT", &format!("{p}/{name}"), Some(stale.clone()));
    assert_eq!(code, 200, "{s2}");
    assert_eq!(s2["metadata"]["labels"]["x"], "1");
    let (code, s3) = h.call("PUT", &format!("{p}/{name}"), Some(stale));
    assert_eq!(code, 409);
    assert_status(&s3, 409, "Conflict");
}

#[test]
fn istio_destination_rules_only_with_the_crd() {
    let f = FakeKube::builder()
        .no_kubelet()
        .istio(true)
        .start()
        .unwrap();
    let h = Http::new(&f);
    let (_, g) = h.call("GET", "/apis", None);
    assert!(
        g["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "networking.istio.io"),
        "{g}"
    );
    let p = "/apis/networking.istio.io/v1beta1/namespaces/ims/destinationrules";
    let dr = json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
        "metadata": {"name": "cray-ims-x-service"}, "spec": {"host": "cray-ims-x-service"}});
    let (code, s) = h.call("POST", p, Some(dr.clone()));
    assert_eq!(code, 201, "{s}");
    assert_eq!(h.call("POST", p, Some(dr)).0, 409);
    assert_eq!(
        h.call("GET", &format!("{p}/cray-ims-x-service"), None).0,
        200
    );
    assert_eq!(
        h.call("DELETE", &format!("{p}/cray-ims-x-service"), None).0,
        200
    );
    assert!(f.list("destinationrules").is_empty());
    // Without the CRD (the default) neither discovery nor the resource exist.
    let f = api_only();
    let h = Http::new(&f);
    let (_, g) = h.call("GET", "/apis", None);
    assert!(
        !g["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "networking.istio.io"),
        "{g}"
    );
    assert_eq!(h.call("GET", p, None).0, 404);
}

#[test]
fn lists_select_by_label_and_field() {
    let f = api_only();
    let h = Http::new(&f);
    for (name, l) in [
        ("a", json!({"app": "x", "tier": "1"})),
        ("b", json!({"app": "y", "tier": "2"})),
        ("c", json!({"app": "x"})),
    ] {
        f.create(
            "configmaps",
            json!({"metadata": {"name": name, "labels": l}}),
        )
        .unwrap();
    }
    let names = |sel: &str| -> Vec<String> {
        let q: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("labelSelector", sel)
            .finish();
        let (code, l) = h.call("GET", &format!("{}?{q}", ns_path(&f, "configmaps")), None);
        assert_eq!(code, 200, "{l}");
        assert_eq!(l["kind"], "ConfigMapList");
        assert_eq!(l["apiVersion"], "v1");
        assert!(
            l["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .is_ok()
        );
        l["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(""), ["a", "b", "c"]);
    assert_eq!(names("app=x"), ["a", "c"]);
    assert_eq!(names("app==x,tier=1"), ["a"]);
    assert_eq!(names("app!=x"), ["b"]);
    assert_eq!(names("tier"), ["a", "b"]);
    assert_eq!(names("!tier"), ["c"]);
    assert_eq!(names("tier in (1, 3)"), ["a"]);
    assert_eq!(names("tier notin (1),app"), ["b", "c"]);
    let (code, s) = h.call(
        "GET",
        &format!("{}?labelSelector=a%20in%20x", ns_path(&f, "configmaps")),
        None,
    );
    assert_eq!(code, 400, "{s}");
    let (code, l) = h.call(
        "GET",
        &format!(
            "{}?fieldSelector=metadata.name%3Db",
            ns_path(&f, "configmaps")
        ),
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(l["items"].as_array().unwrap().len(), 1);
    assert_eq!(l["items"][0]["metadata"]["name"], "b");
    let (_, l) = h.call(
        "GET",
        &format!(
            "{}?fieldSelector=metadata.name!%3Db",
            ns_path(&f, "configmaps")
        ),
        None,
    );
    assert_eq!(l["items"].as_array().unwrap().len(), 2);
    // Another namespace is empty.
    let (_, l) = h.call("GET", "/api/v1/namespaces/other/configmaps", None);
    assert_eq!(l["items"], json!([]));
}

#[test]
fn watch_replays_streams_and_expires() {
    let f = FakeKube::builder()
        .no_kubelet()
        .event_log(4)
        .start()
        .unwrap();
    let h = Http::new(&f);
    let p = ns_path(&f, "configmaps");
    f.create(
        "configmaps",
        json!({"metadata": {"name": "before", "labels": {"app": "x"}}}),
    )
    .unwrap();
    let (_, l) = h.call("GET", &p, None);
    let rv0: u64 = l["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let w = h.watch(
        &format!("{p}?watch=true&resourceVersion={rv0}&labelSelector=app%3Dx&timeoutSeconds=20"),
        3,
        T,
    );
    let all = h.watch(&format!("{p}?watch=1&timeoutSeconds=20"), 1, T);
    std::thread::sleep(Duration::from_millis(300));
    f.create(
        "configmaps",
        json!({"metadata": {"name": "other", "labels": {"app": "y"}}}),
    )
    .unwrap();
    f.create(
        "configmaps",
        json!({"metadata": {"name": "w", "labels": {"app": "x"}}}),
    )
    .unwrap();
    let (code, _) = h.call("PATCH", &format!("{p}/w"), None);
    assert_eq!(code, 400, "a patch needs a body");
    let c =
        h.c.patch(format!("{}{p}/w", h.base))
            .bearer_auth(&h.token)
            .header("Content-Type", "application/merge-patch+json")
            .body(r#"{"data":{"k":"v"}}"#);
    let code =
        h.rt.block_on(async { c.send().await.unwrap().status().as_u16() });
    assert_eq!(code, 200);
    let (code, s) = h.call("DELETE", &format!("{p}/w"), None);
    assert_eq!(code, 200);
    assert_eq!(
        (s["kind"].as_str(), s["status"].as_str()),
        (Some("Status"), Some("Success"))
    );
    let (code, evs) = h.join(w);
    assert_eq!(code, 200);
    let types: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ADDED", "MODIFIED", "DELETED"], "{evs:?}");
    assert!(evs.iter().all(|e| e["object"]["metadata"]["name"] == "w"));
    assert_eq!(evs[1]["object"]["data"]["k"], "v");
    let rvs: Vec<u64> = evs
        .iter()
        .map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        rvs[0] > rv0 && rvs.windows(2).all(|w| w[0] < w[1]),
        "{rvs:?}"
    );
    // Without a version, the present objects come first.
    let (_, evs) = h.join(all);
    assert_eq!(evs[0]["type"], "ADDED");
    assert_eq!(evs[0]["object"]["metadata"]["name"], "before");

    // A streaming list: the objects, then a bookmark marking their end.
    let (_, evs) = h.join(h.watch(&format!("{p}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=5"), 3, T));
    let types: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ADDED", "ADDED", "BOOKMARK"], "{evs:?}");
    assert_eq!(
        evs[2]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(evs[2]["object"]["kind"], "ConfigMap");
    // Replay from a version still in the log.
    let (_, evs) = h.join(h.watch(
        &format!("{p}?watch=true&resourceVersion={}&timeoutSeconds=1", rvs[0]),
        10,
        T,
    ));
    let types: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["MODIFIED", "DELETED"], "{evs:?}");
    // The log holds 4 events: after two more, the first versions are gone.
    f.create("configmaps", json!({"metadata": {"name": "more1"}}))
        .unwrap();
    f.create("configmaps", json!({"metadata": {"name": "more2"}}))
        .unwrap();
    let (code, evs) = h.join(h.watch(&format!("{p}?watch=true&resourceVersion={rv0}"), 10, T));
    assert_eq!(code, 200);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0]["type"], "ERROR");
    assert_eq!(evs[0]["object"]["code"], 410);
    assert_eq!(evs[0]["object"]["reason"], "Expired");
    // An object leaving a watch's selector is DELETED for it, one entering ADDED.
    let w = h.watch(
        &format!(
            "{p}?watch=true&resourceVersion={}&labelSelector=app%3Dx&timeoutSeconds=10",
            f.resource_version()
        ),
        3,
        T,
    );
    std::thread::sleep(Duration::from_millis(300));
    f.create(
        "configmaps",
        json!({"metadata": {"name": "moves", "labels": {"app": "x"}}}),
    )
    .unwrap();
    for app in ["y", "x"] {
        let c =
            h.c.patch(format!("{}{p}/moves", h.base))
                .bearer_auth(&h.token)
                .header("Content-Type", "application/strategic-merge-patch+json")
                .body(json!({"metadata": {"labels": {"app": app}}}).to_string());
        assert_eq!(
            h.rt.block_on(async { c.send().await.unwrap().status().as_u16() }),
            200
        );
    }
    let (_, evs) = h.join(w);
    let types: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ADDED", "DELETED", "ADDED"], "{evs:?}");
    assert_eq!(evs[1]["object"]["metadata"]["labels"]["app"], "y");
    // Other patch types are refused.
    let c =
        h.c.patch(format!("{}{p}/moves", h.base))
            .bearer_auth(&h.token)
            .header("Content-Type", "application/json-patch+json")
            .body("[]");
    assert_eq!(
        h.rt.block_on(async { c.send().await.unwrap().status().as_u16() }),
        415
    );
    // timeoutSeconds ends the stream; bookmarks carry the current version.
    let started = Instant::now();
    let (_, evs) = h.join(h.watch(
        &format!(
            "{p}?watch=true&resourceVersion={}&timeoutSeconds=2&allowWatchBookmarks=true",
            f.resource_version()
        ),
        100,
        T,
    ));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        !evs.is_empty() && evs.iter().all(|e| e["type"] == "BOOKMARK"),
        "{evs:?}"
    );
    assert_eq!(
        evs.last().unwrap()["object"]["metadata"]["resourceVersion"],
        f.resource_version().to_string()
    );
}

#[test]
fn deletion_propagates_to_dependents() {
    let f = api_only();
    let h = Http::new(&f);
    let owner = |id: &str| {
        let j = f.create("jobs", job(id, &["true"])).unwrap();
        let r = json!([{"apiVersion": "batch/v1", "kind": "Job", "name": j["metadata"]["name"],
            "uid": j["metadata"]["uid"], "blockOwnerDeletion": true}]);
        for plural in ["secrets", "configmaps", "services"] {
            f.create(
                plural,
                json!({"metadata": {"name": format!("{id}-{plural}"), "ownerReferences": r}}),
            )
            .unwrap();
        }
        j
    };
    // Background (the default): all gone at once.
    owner("bg");
    let (code, s) = h.call(
        "DELETE",
        &format!("{}/{}", ns_path(&f, "jobs"), job_name("bg")),
        None,
    );
    assert_eq!((code, s["status"].as_str()), (200, Some("Success")), "{s}");
    for plural in ["secrets", "configmaps", "services"] {
        assert!(f.get(plural, &format!("bg-{plural}")).is_none(), "{plural}");
    }
    // Orphan: the dependents stay, without the reference.
    owner("or");
    let (code, _) = h.call(
        "DELETE",
        &format!("{}/{}", ns_path(&f, "jobs"), job_name("or")),
        Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Orphan"})),
    );
    assert_eq!(code, 200);
    let s = f.get("secrets", "or-secrets").unwrap();
    assert_eq!(s["metadata"]["ownerReferences"], json!([]));
    // Foreground with a dependent that lingers (a pod with a running container is shown by the
    // kubelet tests); without one the owner goes when the dependents have.
    owner("fg");
    let (code, _) = h.call(
        "DELETE",
        &format!("{}/{}", ns_path(&f, "jobs"), job_name("fg")),
        Some(json!({"propagationPolicy": "Foreground"})),
    );
    assert_eq!(code, 200);
    assert!(f.get("jobs", &job_name("fg")).is_none());
    assert!(f.get("services", "fg-services").is_none());
    let dels = f.requests_to("DELETE", "jobs");
    let policies: Vec<Option<String>> = dels.iter().map(|r| r.param("propagationPolicy")).collect();
    assert_eq!(
        policies,
        [None, Some("Orphan".into()), Some("Foreground".into())]
    );
    let (code, s) = h.call(
        "DELETE",
        &format!("{}/{}", ns_path(&f, "jobs"), job_name("fg")),
        None,
    );
    assert_eq!(code, 404);
    assert_status(&s, 404, "NotFound");
    let (code, s) = h.call(
        "DELETE",
        &format!("{}/or-secrets", ns_path(&f, "secrets")),
        Some(json!({"propagationPolicy": "Sometimes"})),
    );
    assert_eq!(code, 422, "{s}");
}

#[test]
fn kubectl_sees_the_objects() {
    let f = api_only();
    f.create("jobs", job("k1", &["true"])).unwrap();
    let mut other = job("k2", &["true"]);
    other["metadata"]["labels"] = json!({"app.kubernetes.io/name": "something-else"});
    f.create("jobs", other).unwrap();
    let l = f.kubectl_json(&[
        "get",
        "jobs",
        "-n",
        "ims",
        "-l",
        "app.kubernetes.io/name=ims-job",
    ]);
    let names: Vec<&str> = l["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [job_name("k1")]);
    // Errors come through as kubectl prints Status messages.
    let out = f
        .kubectl()
        .args(["get", "job", "nope", "-o", "json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("jobs.batch \"nope\" not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.kubectl_ok(&["delete", "job", &job_name("k1"), "--cascade=foreground"]);
    assert!(f.get("jobs", &job_name("k1")).is_none());
    let r = f.requests_to("DELETE", "jobs");
    assert_eq!(
        r.last().unwrap().param("propagationPolicy").as_deref(),
        Some("Foreground")
    );
}

// --- The kubelet (root) ---------------------------------------------------------------------

#[test]
fn kubectl_created_job_runs_with_secret_claim_and_network() {
    let Some(f) = FakeKube::start() else { return };
    let id = "2f0c9d8e-0000-4000-8000-000000000001";
    f.create("secrets", secret(id, "s3cret-token")).unwrap();
    f.create("persistentvolumeclaims", pvc(id)).unwrap();
    f.create("services", service(id)).unwrap();
    assert!(
        f.get("services", &format!("cray-ims-{id}-service"))
            .unwrap()["spec"]["clusterIP"]
            .as_str()
            .is_some()
    );
    // The pod listens on port 22 until the test has connected through the Service's address.
    let script = "echo hi; printf %s \"$IMS_TOKEN\" >/mnt/image/token; env | sort >/mnt/image/env; \
                  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"0.0.0.0\", 22)); s.listen(1); c,_=s.accept(); c.sendall(b\"pod-says-hi\"); c.close()'; echo done";
    let manifest = f.dir().join("job.json");
    std::fs::write(
        &manifest,
        serde_json::to_vec(&job(id, &["sh", "-c", script])).unwrap(),
    )
    .unwrap();
    let out = f
        .kubectl()
        .args(["create", "-f"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("created"));
    let jn = job_name(id);

    let pod = f.wait_pod_phase(&jn, "Running", T);
    let pn = pod["metadata"]["name"].as_str().unwrap().to_string();
    assert!(
        pn.starts_with(&format!("{jn}-")) && pn.len() == jn.len() + 6,
        "{pn}"
    );
    let l = &pod["metadata"]["labels"];
    let juid = f.get("jobs", &jn).unwrap()["metadata"]["uid"].clone();
    assert_eq!(l["job-name"], json!(jn));
    assert_eq!(l["batch.kubernetes.io/job-name"], json!(jn));
    assert_eq!(l["controller-uid"], juid);
    assert_eq!(l["app"], json!(format!("ims-{id}-customize")));
    assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], juid);
    let ip: std::net::Ipv4Addr = pod["status"]["podIP"].as_str().unwrap().parse().unwrap();
    let gw = f.gateway().unwrap();
    assert_eq!(ip.octets()[..3], gw.octets()[..3]);
    assert_eq!(f.get("jobs", &jn).unwrap()["status"]["active"], 1);
    assert!(
        condition(&pod, "Ready").is_some_and(|c| c["status"] == "True"),
        "{pod}"
    );
    assert!(pod["status"]["containerStatuses"][0]["state"]["running"].is_object());
    // The Service reports the pod's address; port 22 there is the pod's.
    let svc = f.wait_for(T, "the LoadBalancer address", |f| {
        let s = f.get("services", &format!("cray-ims-{id}-service"))?;
        s["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .map(str::to_string)
    });
    assert_eq!(svc, ip.to_string());
    let got = (|| {
        let deadline = Instant::now() + T;
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect((ip, 22)) {
                let mut b = String::new();
                std::io::Read::read_to_string(&mut s, &mut b).unwrap();
                return b;
            }
            let phase = f.get("pods", &pn).unwrap()["status"]["phase"].clone();
            assert!(
                Instant::now() < deadline && phase == "Running",
                "the pod's port 22 does not answer ({phase}): {}",
                f.pod_log(&pn)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })();
    assert_eq!(got, "pod-says-hi");

    let pod = f.wait_pod_phase(&jn, "Succeeded", T);
    let term = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (term["exitCode"].as_i64(), term["reason"].as_str()),
        (Some(0), Some("Completed"))
    );
    let j = f.wait_for(T, "the Job complete", |f| {
        f.get("jobs", &jn)
            .filter(|j| condition(j, "Complete").is_some())
    });
    assert_eq!(j["status"]["succeeded"], 1);
    assert!(j["status"]["active"].is_null());
    assert!(j["status"]["completionTime"].is_string());
    assert_eq!(
        f.get(
            "persistentvolumeclaims",
            &format!("cray-ims-{id}-job-claim")
        )
        .unwrap()["status"]["phase"],
        "Bound"
    );
    // The Secret's token came through env; the claim was at /mnt/image.
    let claim = f.pvc_dir(&format!("cray-ims-{id}-job-claim"));
    assert_eq!(
        std::fs::read_to_string(claim.join("token")).unwrap(),
        "s3cret-token"
    );
    let env = std::fs::read_to_string(claim.join("env")).unwrap();
    assert!(
        env.lines().any(|l| l == "IMS_AGENT_DIR=/mnt/image"),
        "{env}"
    );
    assert!(
        !env.contains("CARGO"),
        "the test's environment leaked: {env}"
    );
    assert_eq!(f.pod_log(&pn), "hi\ndone\n");
    let out = f.kubectl_ok(&[
        "logs",
        "-l",
        &format!("job-name={jn}"),
        "-c",
        "buildenv-sidecar",
    ]);
    assert_eq!(out, "hi\ndone\n");
    assert!(f.running_containers().is_empty());
}

#[test]
fn ims_is_the_binary_under_test() {
    let Some(f) = FakeKube::start() else { return };
    let jn = submit(&f, "version", &["ims", "--version"]);
    let pod = f.wait_pod_phase(&jn, "Succeeded", T);
    let log = f.pod_log(pod["metadata"]["name"].as_str().unwrap());
    assert!(log.starts_with("ims "), "{log}");
    // A failing command fails the pod and, with backoffLimit 0, the Job.
    let jn = submit(&f, "fails", &["sh", "-c", "exit 3"]);
    let pod = f.wait_pod_phase(&jn, "Failed", T);
    let term = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (term["exitCode"].as_i64(), term["reason"].as_str()),
        (Some(3), Some("Error"))
    );
    let j = f.wait_for(T, "the Job failed", |f| {
        f.get("jobs", &jn)
            .filter(|j| condition(j, "Failed").is_some())
    });
    assert_eq!(
        condition(&j, "Failed").unwrap()["reason"],
        "BackoffLimitExceeded"
    );
    assert_eq!(j["status"]["failed"], 1);
    assert_eq!(f.pods_of(&jn).len(), 1, "no second pod with backoffLimit 0");
}

#[test]
fn a_missing_secret_keeps_the_pod_waiting_until_it_exists() {
    let Some(f) = FakeKube::start() else { return };
    let id = "nosecret";
    f.create("persistentvolumeclaims", pvc(id)).unwrap();
    f.create("jobs", job(id, &["sh", "-c", "printf %s \"$IMS_TOKEN\""]))
        .unwrap();
    let jn = job_name(id);
    let pod = f.wait_for(T, "CreateContainerConfigError", |f| {
        f.pods_of(&jn).into_iter().find(|p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                == "CreateContainerConfigError"
        })
    });
    assert_eq!(pod["status"]["phase"], "Pending");
    let msg = pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap();
    assert_eq!(msg, format!("secret \"cray-ims-{id}-token\" not found"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(f.pods_of(&jn)[0]["status"]["phase"], "Pending");
    f.create("secrets", secret(id, "late")).unwrap();
    let pod = f.wait_pod_phase(&jn, "Succeeded", T);
    assert_eq!(f.pod_log(pod["metadata"]["name"].as_str().unwrap()), "late");
}

#[test]
fn job_deletion_stops_the_pod_and_collects_dependents() {
    let Some(f) = FakeKube::builder()
        .max_grace(Duration::from_secs(1))
        .start()
    else {
        return;
    };
    let h = Http::new(&f);
    let id = "gc";
    // A container that ignores SIGTERM: the grace cap ends it with SIGKILL.
    let jn = submit(
        &f,
        id,
        &[
            "sh",
            "-c",
            "trap '' TERM; echo up; while :; do sleep 0.1; done",
        ],
    );
    let j = f.get("jobs", &jn).unwrap();
    let r = json!([{"apiVersion": "batch/v1", "kind": "Job", "name": jn, "uid": j["metadata"]["uid"], "blockOwnerDeletion": true}]);
    let mut s = service(id);
    s["metadata"]["ownerReferences"] = r.clone();
    f.create("services", s).unwrap();
    f.create(
        "configmaps",
        json!({"metadata": {"name": format!("cray-ims-{id}-configmap"), "ownerReferences": r}}),
    )
    .unwrap();
    let pod = f.wait_pod_phase(&jn, "Running", T);
    let pn = pod["metadata"]["name"].as_str().unwrap().to_string();
    let pid = f.container_pid(&pn).unwrap();
    let start = nodes::start_time(pid).unwrap();
    let (code, body) = h.call(
        "DELETE",
        &format!("{}/{jn}", ns_path(&f, "jobs")),
        Some(
            json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"}),
        ),
    );
    assert_eq!(code, 200);
    // The Job lingers while its pod stops.
    assert_eq!(body["kind"], "Job", "{body}");
    assert!(body["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        body["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );
    assert!(f.get("pods", &pn).unwrap()["metadata"]["deletionTimestamp"].is_string());
    f.wait_for(T, "everything gone", |f| {
        (f.get("jobs", &jn).is_none() && f.get("pods", &pn).is_none()).then_some(())
    });
    assert!(!nodes::running(pid, start), "the container survived");
    assert!(
        f.get("services", &format!("cray-ims-{id}-service"))
            .is_none()
    );
    assert!(
        f.get("configmaps", &format!("cray-ims-{id}-configmap"))
            .is_none()
    );
    // The claim has no owner: it stays until deleted.
    assert!(
        f.get(
            "persistentvolumeclaims",
            &format!("cray-ims-{id}-job-claim")
        )
        .is_some()
    );
}

#[test]
fn fault_image_pull() {
    let Some(f) = FakeKube::start() else { return };
    f.fault_job("pull", Fault::ImagePull);
    let jn = submit(&f, "pull", &["true"]);
    let pod = f.wait_for(T, "ImagePullBackOff", |f| {
        f.pods_of(&jn).into_iter().find(|p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff"
        })
    });
    assert_eq!(pod["status"]["phase"], "Pending");
    assert!(
        pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .contains("registry.local/ims-rs:test")
    );
    let reasons: Vec<String> = f
        .list("events")
        .iter()
        .filter(|e| e["involvedObject"]["name"] == pod["metadata"]["name"])
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons.contains(&"Failed".to_string()) && reasons.contains(&"BackOff".to_string()),
        "{reasons:?}"
    );
    assert!(f.running_containers().is_empty());
    // Other jobs are not affected.
    let ok = submit(&f, "fine", &["true"]);
    f.wait_pod_phase(&ok, "Succeeded", T);
}

#[test]
fn fault_unschedulable() {
    let Some(f) = FakeKube::start() else { return };
    f.fault_next(Fault::Unschedulable, 1);
    let jn = submit(&f, "nosched", &["true"]);
    let pod = f.wait_for(T, "Unschedulable", |f| {
        f.pods_of(&jn)
            .into_iter()
            .find(|p| condition(p, "PodScheduled").is_some_and(|c| c["status"] == "False"))
    });
    let c = condition(&pod, "PodScheduled").unwrap();
    assert_eq!(c["reason"], "Unschedulable");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .starts_with("0/3 nodes are available: 3 Insufficient memory.")
    );
    let ev = f.wait_for(T, "FailedScheduling", |f| {
        f.list("events")
            .into_iter()
            .find(|e| e["reason"] == "FailedScheduling")
    });
    assert_eq!(ev["involvedObject"]["name"], pod["metadata"]["name"]);
    assert_eq!(ev["type"], "Warning");
    // The event is listed with a field selector, as a client asks for it.
    let h = Http::new(&f);
    let (_, l) = h.call(
        "GET",
        &format!(
            "{}?fieldSelector=involvedObject.name%3D{}",
            ns_path(&f, "events"),
            pod["metadata"]["name"].as_str().unwrap()
        ),
        None,
    );
    assert!(
        l["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "FailedScheduling")
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(f.pods_of(&jn)[0]["status"]["phase"], "Pending");
    // Only the next job was faulted.
    let ok = submit(&f, "sched", &["true"]);
    f.wait_pod_phase(&ok, "Succeeded", T);
}

#[test]
fn fault_evict_and_oom_kill() {
    let Some(f) = FakeKube::builder()
        .max_grace(Duration::from_secs(1))
        .start()
    else {
        return;
    };
    let ev = submit(&f, "evict", &["sleep", "600"]);
    let oom = submit(&f, "oom", &["sleep", "600"]);
    let pe = f.wait_pod_phase(&ev, "Running", T);
    let po = f.wait_pod_phase(&oom, "Running", T);
    f.evict(pe["metadata"]["name"].as_str().unwrap()).unwrap();
    f.oom_kill(po["metadata"]["name"].as_str().unwrap())
        .unwrap();
    let pe = f.wait_pod_phase(&ev, "Failed", T);
    assert_eq!(pe["status"]["reason"], "Evicted");
    assert!(
        pe["status"]["message"]
            .as_str()
            .unwrap()
            .starts_with("The node was low on resource: memory.")
    );
    let po = f.wait_pod_phase(&oom, "Failed", T);
    let term = &po["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (term["exitCode"].as_i64(), term["reason"].as_str()),
        (Some(137), Some("OOMKilled"))
    );
    for jn in [&ev, &oom] {
        f.wait_for(T, "the Job failed", |f| {
            f.get("jobs", jn)
                .filter(|j| condition(j, "Failed").is_some())
        });
    }
    assert!(
        f.oom_kill(po["metadata"]["name"].as_str().unwrap())
            .is_err(),
        "no container any more"
    );
}

#[test]
fn active_deadline_fails_the_job() {
    let Some(f) = FakeKube::builder()
        .max_grace(Duration::from_secs(1))
        .start()
    else {
        return;
    };
    let id = "deadline";
    f.create("secrets", secret(id, "t")).unwrap();
    f.create("persistentvolumeclaims", pvc(id)).unwrap();
    let mut j = job(id, &["sleep", "600"]);
    j["spec"]["activeDeadlineSeconds"] = json!(2);
    f.create("jobs", j).unwrap();
    let jn = job_name(id);
    let pod = f.wait_pod_phase(&jn, "Failed", T);
    assert_eq!(pod["status"]["reason"], "DeadlineExceeded");
    let j = f.wait_for(T, "the Job failed", |f| {
        f.get("jobs", &jn)
            .filter(|j| condition(j, "Failed").is_some())
    });
    assert_eq!(
        condition(&j, "Failed").unwrap()["reason"],
        "DeadlineExceeded"
    );
}

#[test]
fn custom_runtime_gets_the_resolved_launch() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: the fake kubelet needs root");
        return;
    }
    let seen = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    let s2 = seen.clone();
    let runtime = Runtime::Custom(std::sync::Arc::new(
        move |l: &crate::common::pod::ContainerLaunch| {
            s2.lock().unwrap().push(l.clone());
            let log = std::fs::File::create(&l.log_file)?;
            // The container runs in the pod's network namespace, as podman's `--network ns:` would.
            std::process::Command::new("ip")
                .arg("netns")
                .arg("exec")
                .arg(l.netns.file_name().unwrap())
                .args(["ip", "-4", "-o", "addr", "show", "eth0"])
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
        },
    ));
    let f = FakeKube::builder().runtime(runtime).start().unwrap();
    let jn = submit(&f, "custom", &["ims", "agent", "run", "custom"]);
    let pod = f.wait_pod_phase(&jn, "Succeeded", T);
    let l = seen.lock().unwrap()[0].clone();
    assert_eq!(l.argv, ["ims", "agent", "run", "custom"]);
    assert_eq!(l.name, "buildenv-sidecar");
    assert_eq!(l.image, "registry.local/ims-rs:test");
    assert!(
        l.env
            .contains(&("IMS_TOKEN".into(), "token-of-custom".into()))
    );
    assert_eq!(l.env[0].0, "PATH");
    assert_eq!(l.mounts.len(), 1);
    assert_eq!(l.mounts[0].container_path, "/mnt/image");
    assert_eq!(l.mounts[0].host_dir, f.pvc_dir("cray-ims-custom-job-claim"));
    assert_eq!(l.cap_add, CAPS);
    assert_eq!(
        (l.cap_drop.as_slice(), l.privileged),
        (&["ALL".to_string()][..], false)
    );
    let log = f.pod_log(pod["metadata"]["name"].as_str().unwrap());
    assert!(
        log.contains(&format!(
            "inet {}/24",
            pod["status"]["podIP"].as_str().unwrap()
        )),
        "{log}"
    );
}

#[test]
fn teardown_leaves_nothing_and_stale_fakes_are_swept() {
    let Some(f) = FakeKube::start() else { return };
    let k = f.k().unwrap();
    let jn = submit(&f, "teardown", &["sleep", "600"]);
    let pod = f.wait_pod_phase(&jn, "Running", T);
    let pid = f
        .container_pid(pod["metadata"]["name"].as_str().unwrap())
        .unwrap();
    let start = nodes::start_time(pid).unwrap();
    let dir = f.dir().to_path_buf();
    assert!(nodes::link_exists(&format!("imskb{k}")));
    assert!(
        nodes::netns_names()
            .iter()
            .any(|n| n.starts_with(&format!("imsk{k}n")))
    );
    drop(f);
    assert!(!nodes::running(pid, start), "a container survived");
    assert!(!nodes::link_exists(&format!("imskb{k}")));
    assert!(
        !nodes::link_names()
            .iter()
            .any(|n| n.starts_with(&format!("imsk{k}n")))
    );
    assert!(
        !nodes::netns_names()
            .iter()
            .any(|n| n.starts_with(&format!("imsk{k}n")))
    );
    assert!(!dir.exists());

    // A fake of a dead process: bridge, a pod namespace, its directory.
    let lock = nodes::RigLock::acquire().unwrap();
    let k = (1..=250u8)
        .rev()
        .find(|k| !nodes::link_exists(&format!("imskb{k}")))
        .unwrap();
    nodes::ip(&["link", "add", &format!("imskb{k}"), "type", "bridge"]).unwrap();
    nodes::ip(&[
        "link",
        "set",
        &format!("imskb{k}"),
        "alias",
        "ims-test-rig pid=4194305 start=1",
    ])
    .unwrap();
    nodes::ip(&["netns", "add", &format!("imsk{k}n0")]).unwrap();
    let stale_dir = std::env::temp_dir().join(format!("ims-kube{k}"));
    std::fs::create_dir_all(stale_dir.join("logs")).unwrap();
    // Under the lock all along: no other test's fake sweeps it first.
    let swept = kube::sweep_locked(&lock).unwrap();
    drop(lock);
    assert!(swept.contains(&k), "{swept:?}");
    assert!(!nodes::link_exists(&format!("imskb{k}")));
    assert!(!nodes::netns_names().contains(&format!("imsk{k}n0")));
    assert!(!stale_dir.exists());
}

#[test]
fn the_process_runtime_applies_capabilities_and_namespaces() {
    let Some(f) = FakeKube::start() else { return };
    let probe = "grep -E '^(CapBnd|NoNewPrivs)' /proc/self/status; echo pid=$$; hostname -I 2>/dev/null || true; ls /proc | grep -cE '^[0-9]+$'";
    // The contract's list (drop ALL, add CAPS).
    let jn = submit(&f, "caps", &["sh", "-c", probe]);
    let pod = f.wait_pod_phase(&jn, "Succeeded", T);
    let log = f.pod_log(pod["metadata"]["name"].as_str().unwrap());
    assert!(log.contains("CapBnd:\t00000000a82405fb"), "{log}");
    assert!(log.contains("NoNewPrivs:\t0"), "{log}");
    assert!(
        log.contains("pid=1\n"),
        "PID 1 of its own PID namespace: {log}"
    );
    // Privileged and no privilege escalation.
    let mut j = job("priv", &["sh", "-c", probe]);
    j["spec"]["template"]["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
    f.create("secrets", secret("priv", "t")).unwrap();
    f.create("persistentvolumeclaims", pvc("priv")).unwrap();
    f.create("jobs", j).unwrap();
    let mut j = job("nnp", &["sh", "-c", probe]);
    j["spec"]["template"]["spec"]["containers"][0]["securityContext"] =
        json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["NET_RAW", "MKNOD"]}});
    f.create("secrets", secret("nnp", "t")).unwrap();
    f.create("persistentvolumeclaims", pvc("nnp")).unwrap();
    f.create("jobs", j).unwrap();
    let p = f.wait_pod_phase(&job_name("priv"), "Succeeded", T);
    let log = f.pod_log(p["metadata"]["name"].as_str().unwrap());
    let host_bnd = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("CapBnd"))
        .unwrap()
        .to_string();
    assert!(log.contains(&host_bnd), "{log} vs {host_bnd}");
    let p = f.wait_pod_phase(&job_name("nnp"), "Succeeded", T);
    let log = f.pod_log(p["metadata"]["name"].as_str().unwrap());
    // The default set without NET_RAW (13) and MKNOD (27).
    assert!(log.contains("CapBnd:\t00000000a00405fb"), "{log}");
    assert!(log.contains("NoNewPrivs:\t1"), "{log}");
    // A malformed capability fails the container's start.
    let mut j = job("badcap", &["true"]);
    j["spec"]["template"]["spec"]["containers"][0]["securityContext"] =
        json!({"capabilities": {"add": ["SYS ADMIN; reboot"]}});
    f.create("secrets", secret("badcap", "t")).unwrap();
    f.create("persistentvolumeclaims", pvc("badcap")).unwrap();
    f.create("jobs", j).unwrap();
    let p = f.wait_pod_phase(&job_name("badcap"), "Failed", T);
    let term = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(term["reason"], "StartError", "{p}");
    assert!(
        term["message"].as_str().unwrap().contains("capability"),
        "{p}"
    );
}

#[test]
fn kubectl_follows_a_pods_log_until_it_ends() {
    let Some(f) = FakeKube::start() else { return };
    let jn = submit(&f, "follow", &["sh", "-c", "echo one; sleep 1; echo two"]);
    let pod = f.wait_pod_phase(&jn, "Running", T);
    let pn = pod["metadata"]["name"].as_str().unwrap();
    let started = Instant::now();
    let out = f.kubectl_ok(&["logs", "-f", pn, "-c", "buildenv-sidecar"]);
    assert_eq!(out, "one\ntwo\n");
    assert!(started.elapsed() < Duration::from_secs(10));
    let out = f.kubectl().args(["logs", "nope"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pods \"nope\" not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
