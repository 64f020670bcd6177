//! The Kubernetes objects the project ships (`deploy/kubernetes/`, as `kubectl kustomize` renders them) and
//! those the `kubernetes` executor emits (the golden files under `crates/kubernetes/tests/golden/`),
//! checked against the official schemas by `kubernetes-validate` in strict mode (unknown fields refused) for
//! the oldest Kubernetes it bundles and supported here (1.25; CSM 1.6 runs 1.24, whose schemas it no longer
//! ships), the one k8s-openapi is built for (1.33) and the newest it bundles (1.37). Then what a schema cannot
//! see: the RBAC rules are exactly the executor's API use, the objects refer to each other consistently
//! (selectors, ports, Secret keys, the ServiceAccount, the API URL the job pods use), the probes' paths are
//! served without a token, every setting named is one `ims serve` knows and accepts, names and labels are
//! valid.
//!
//! Needs `IMS_TEST_KUBERNETES_VALIDATE` (scripts/test.sh installs kubernetes-validate in its venv and sets
//! it) and `kubectl` (for `kubectl kustomize`, offline). kubernetes-validate bundles its schemas: no network.

use crate::common::*;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Kubernetes versions every object is validated against.
const VERSIONS: &[&str] = &["1.25.0", "1.33.0", "1.37.0"];

/// Kinds whose schemas kubernetes-validate does not bundle (custom resources), accepted without one:
/// `(apiVersion, kind)`. Any other object without a schema (a misspelled `apiVersion`) fails.
const WITHOUT_SCHEMA: &[(&str, &str)] = &[("networking.istio.io/v1beta1", "DestinationRule")];

/// The executor's API use in the job namespace, as it declares it: the Role grants exactly these.
const EXECUTOR_RIGHTS: &[(&str, &str, &[&str])] = ims_kubernetes::executor::API_RIGHTS;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn deploy_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

fn golden_dir() -> PathBuf {
    repo().join("crates/kubernetes/tests/golden")
}

/// The YAML files of a directory (not recursive), sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

/// The executor's golden files: one object per file, in JSON (which is YAML), written by
/// `crates/kubernetes/tests/objects.rs`.
fn golden_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", golden_dir().display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// The manifests of `deploy/kubernetes/` (every YAML file but the kustomization).
fn manifest_files() -> Vec<PathBuf> {
    yaml_files(&deploy_dir())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect()
}

/// The documents of a YAML stream (empty ones skipped).
fn documents(yaml: &str) -> Vec<Value> {
    yaml_serde::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("bad YAML: {e}\n{yaml}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn file_documents(path: &Path) -> Vec<Value> {
    documents(&std::fs::read_to_string(path).unwrap())
}

fn kubernetes_validate() -> String {
    std::env::var("IMS_TEST_KUBERNETES_VALIDATE").expect(
        "IMS_TEST_KUBERNETES_VALIDATE is not set: run the tests with scripts/test.sh (it installs kubernetes-validate)",
    )
}

/// `kubectl kustomize DIR`.
fn kustomize(dir: &Path) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl (needed for `kubectl kustomize`): {e}"));
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The rendered deployment: `kubectl kustomize deploy/kubernetes`.
fn rendered() -> Objects {
    Objects(documents(&kustomize(&deploy_dir())))
}

fn str_of<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

fn kind_of(v: &Value) -> (&str, &str) {
    (str_of(v, "/apiVersion"), str_of(v, "/kind"))
}

/// Runs kubernetes-validate (strict) on `files` for `version`. Ok when every object passed against its
/// schema; Err(the tool's output) when one did not, when the tool failed, or when an object had no schema
/// (except [`WITHOUT_SCHEMA`]): kubernetes-validate only warns then, and would let a misspelled `apiVersion`
/// through.
fn validate(files: &[PathBuf], version: &str) -> Result<(), String> {
    assert!(!files.is_empty());
    let expected: usize = files
        .iter()
        .flat_map(|f| file_documents(f))
        .filter(|d| !WITHOUT_SCHEMA.contains(&kind_of(d)))
        .count();
    let out = Command::new(kubernetes_validate())
        .args(["--strict", "-k", version])
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubernetes-validate: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!(
            "kubernetes-validate failed ({}):\n{text}",
            out.status
        ));
    }
    for line in text.lines() {
        let allowed = WITHOUT_SCHEMA.iter().any(|(api, kind)| {
            line.contains(&format!(
                "Couldn't find schema for kind {kind} with api version {api} "
            ))
        });
        if (line.starts_with("WARN") || line.starts_with("ERROR")) && !allowed {
            return Err(format!("kubernetes-validate -k {version}: {line}\n{text}"));
        }
    }
    let passed = text
        .lines()
        .filter(|l| l.starts_with("INFO") && l.contains(" passed for resource "))
        .count();
    if passed != expected {
        return Err(format!(
            "kubernetes-validate -k {version}: {passed} objects passed, {expected} expected:\n{text}"
        ));
    }
    Ok(())
}

fn validate_all_versions(files: &[PathBuf]) {
    for v in VERSIONS {
        if let Err(e) = validate(files, v) {
            panic!("{e}");
        }
    }
}

/// A set of objects, found by kind and name.
struct Objects(Vec<Value>);

impl Objects {
    fn get(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<&Value> = self
            .0
            .iter()
            .filter(|o| str_of(o, "/kind") == kind && str_of(o, "/metadata/name") == name)
            .collect();
        assert_eq!(found.len(), 1, "exactly one {kind} {name}");
        found[0]
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.0
            .iter()
            .filter(|o| str_of(o, "/kind") == kind)
            .collect()
    }

    fn only(&self, kind: &str) -> &Value {
        let all = self.of_kind(kind);
        assert_eq!(all.len(), 1, "exactly one {kind}");
        all[0]
    }
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = v
                        .as_str()
                        .unwrap_or_else(|| panic!("{k}: {v} is not a string"));
                    (k.clone(), v.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether every pair of `selector` is in `labels` (and the selector is not empty).
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The server's container in the Deployment.
fn server_container(deployment: &Value) -> &Value {
    let containers = deployment
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .unwrap();
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// The container's `env` as name → entry.
fn env_of(container: &Value) -> BTreeMap<String, Value> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (str_of(e, "/name").to_string(), e.clone()))
        .collect()
}

/// Every `IMS_…` word in `text`.
fn ims_words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("IMS_") && w.len() > 4)
        .map(str::to_string)
        .collect()
}

/// The environment names `ims serve` knows: its `--help` lists every setting.
fn serve_settings() -> BTreeSet<String> {
    let out = Command::new(ims_bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let names: BTreeSet<String> = help
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            w.len() > 3
                && w.contains('_')
                && w.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_string)
        .collect();
    // The listing is there (a sample of names of every kind).
    for n in [
        "IMS_LISTEN",
        "IMS_DATABASE_URL",
        "S3_ENDPOINT",
        "IMS_JOB_NAMESPACE",
    ] {
        assert!(names.contains(n), "{n} not in `ims serve --help`:\n{help}");
    }
    names
}

// ---- the schemas ----

#[test]
fn deploy_manifests_pass_the_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kustomized.yaml");
    std::fs::write(&out, kustomize(&deploy_dir())).unwrap();
    // What `kubectl apply -k` sends, and the files themselves (`kubectl apply -f`).
    let mut files = vec![out];
    files.extend(manifest_files());
    validate_all_versions(&files);
}

#[test]
fn golden_objects_pass_the_schemas() {
    let files = golden_files();
    assert!(
        files.len() >= 10,
        "{} holds {} golden files: the executor's objects are missing",
        golden_dir().display(),
        files.len()
    );
    validate_all_versions(&files);
}

/// The check itself works: a valid object passes; a misspelled field, a wrong type or an unknown
/// `apiVersion` fail, for every version.
#[test]
fn the_schema_check_rejects_broken_objects() {
    let good = "apiVersion: apps/v1
kind: Deployment
metadata: {name: x, namespace: services}
spec:
  replicas: 2
  selector: {matchLabels: {app: x}}
  template:
    metadata: {labels: {app: x}}
    spec:
      containers: [{name: x, image: 'ims-rs:1', args: [serve]}]
";
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        vec![p]
    };
    let broken = [
        (
            "misspelled.yaml",
            good.replace("replicas:", "replicaz:"),
            "replicaz",
        ),
        ("nested.yaml", good.replace("args:", "argz:"), "argz"),
        (
            "type.yaml",
            good.replace("replicas: 2", "replicas: two"),
            "two",
        ),
        (
            "version.yaml",
            good.replace("apps/v1", "apps/v2"),
            "apps/v2",
        ),
    ];
    for v in VERSIONS {
        validate(&write("good.yaml", good), v).unwrap();
        for (file, text, word) in &broken {
            let e = validate(&write(file, text), v)
                .expect_err(&format!("{file} passed kubernetes-validate -k {v}"));
            assert!(e.contains(word), "{file}: {e}");
        }
    }
    // A custom resource without a bundled schema passes only if it is one of WITHOUT_SCHEMA.
    let rule = "apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: x}
spec: {host: x}
";
    validate(&write("rule.yaml", rule), VERSIONS[0]).unwrap();
    let other = rule.replace("DestinationRule", "VirtualService");
    validate(&write("other.yaml", &other), VERSIONS[0]).expect_err("VirtualService passed");
}

// ---- what the schemas cannot see ----

#[test]
fn kustomization_lists_every_manifest() {
    let k = file_documents(&deploy_dir().join("kustomization.yaml"));
    let listed: BTreeSet<String> = k[0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let files: BTreeSet<String> = manifest_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, files);
    // kustomize changes nothing but the image (identical here): what `kubectl apply -f` of the files
    // sends is what `kubectl apply -k` sends.
    let mut from_files: Vec<Value> = manifest_files()
        .iter()
        .flat_map(|f| file_documents(f))
        .collect();
    let mut rendered = rendered().0;
    let key = |v: &Value| format!("{}/{}", str_of(v, "/kind"), str_of(v, "/metadata/name"));
    from_files.sort_by_key(key);
    rendered.sort_by_key(key);
    assert_eq!(from_files, rendered);
}

#[test]
fn rbac_grants_exactly_the_executor_api_use() {
    let o = rendered();
    assert!(
        o.of_kind("ClusterRole").is_empty() && o.of_kind("ClusterRoleBinding").is_empty(),
        "no cluster-wide rights"
    );
    let role = o.only("Role");
    let binding = o.only("RoleBinding");
    let deployment = o.get("Deployment", "cray-ims");
    let config = o.get("ConfigMap", "ims-config");
    let job_ns = str_of(config, "/data/IMS_JOB_NAMESPACE");
    let service_ns = str_of(deployment, "/metadata/namespace");

    // The Role and its binding live in the job namespace, which the manifests create.
    assert_eq!(str_of(role, "/metadata/namespace"), job_ns);
    assert_eq!(str_of(binding, "/metadata/namespace"), job_ns);
    o.get("Namespace", job_ns);
    // The rules, expanded to (group, resource, verb), are exactly the table.
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        let keys: BTreeSet<&str> = rule
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["apiGroups", "resources", "verbs"]),
            "no resourceNames or nonResourceURLs: {rule}"
        );
        let list = |k: &str| -> Vec<String> {
            rule[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        for g in list("apiGroups") {
            for r in list("resources") {
                for v in list("verbs") {
                    assert!(
                        !g.contains('*') && !r.contains('*') && !v.contains('*'),
                        "{rule}"
                    );
                    assert!(
                        granted.insert((g.clone(), r.clone(), v)),
                        "granted twice: {rule}"
                    );
                }
            }
        }
    }
    let expected: BTreeSet<(String, String, String)> = EXECUTOR_RIGHTS
        .iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect();
    let extra: Vec<_> = granted.difference(&expected).collect();
    let missing: Vec<_> = expected.difference(&granted).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "the Role grants more than the executor uses: {extra:?}; less: {missing:?}"
    );

    // The binding gives that Role to the Deployment's ServiceAccount, which exists beside it.
    assert_eq!(binding["roleRef"]["apiGroup"], "rbac.authorization.k8s.io");
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let account = str_of(deployment, "/spec/template/spec/serviceAccountName");
    let sa = o.get("ServiceAccount", account);
    assert_eq!(str_of(sa, "/metadata/namespace"), service_ns);
    let subjects = binding["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 1, "one subject: {subjects:?}");
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["name"], account);
    assert_eq!(subjects[0]["namespace"], service_ns);
    // The executor's in-cluster credentials are that account's token.
    assert_eq!(
        deployment.pointer("/spec/template/spec/automountServiceAccountToken"),
        Some(&Value::Bool(true))
    );
}

#[test]
fn deployment_service_and_budget_fit_together() {
    let o = rendered();
    let deployment = o.get("Deployment", "cray-ims");
    let service = o.get("Service", "cray-ims");
    let budget = o.only("PodDisruptionBudget");
    let config = o.get("ConfigMap", "ims-config");
    let secret = o.get("Secret", "ims-secrets");
    let ns = str_of(deployment, "/metadata/namespace");
    for x in [service, budget, config, secret] {
        assert_eq!(str_of(x, "/metadata/namespace"), ns, "{x}");
    }
    let pod = &deployment["spec"]["template"];
    let labels = string_map(pod.pointer("/metadata/labels"));

    // Replicas behind one Service, updated one at a time, a drain keeping one.
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    assert_eq!(budget["spec"]["minAvailable"], 1);
    // Selectors match the pods (and select them alone: not the job pods' `ims-job`).
    let sel = string_map(deployment.pointer("/spec/selector/matchLabels"));
    assert!(selects(&sel, &labels), "{sel:?} vs {labels:?}");
    assert!(selects(
        &string_map(service.pointer("/spec/selector")),
        &labels
    ));
    assert!(selects(
        &string_map(budget.pointer("/spec/selector/matchLabels")),
        &labels
    ));
    for c in pod
        .pointer("/spec/topologySpreadConstraints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        assert!(selects(
            &string_map(c.pointer("/labelSelector/matchLabels")),
            &labels
        ));
    }
    assert_ne!(
        labels.get("app.kubernetes.io/name").map(String::as_str),
        Some("ims-job")
    );

    // The container listens where the Service and the probes send requests.
    let c = server_container(deployment);
    assert_eq!(c["command"], serde_json::json!(["ims"]));
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "serve");
    let listen = args
        .windows(2)
        .find(|w| w[0] == "--listen")
        .map(|w| w[1])
        .expect("--listen");
    let listen: std::net::SocketAddr = listen.parse().unwrap();
    assert!(listen.ip().is_unspecified(), "reachable from other pods");
    let ports = c["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["containerPort"], listen.port());
    let port_name = str_of(&ports[0], "/name");
    let sports = service["spec"]["ports"].as_array().unwrap();
    assert_eq!(
        sports.len(),
        1,
        "the API only (external S3: no built-in S3 port)"
    );
    assert_eq!(sports[0]["targetPort"], port_name);
    assert_eq!(service["spec"]["type"], "ClusterIP");
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], port_name, "{probe}");
    }
    // Job pods reach the API through this Service's cluster DNS name.
    assert_eq!(
        str_of(config, "/data/IMS_AGENT_API_URL"),
        format!(
            "http://{}.{ns}.svc.cluster.local:{}",
            str_of(service, "/metadata/name"),
            sports[0]["port"]
        )
    );

    // Settings: the ConfigMap, the Secret's keys, the Secret's files.
    let from = c["envFrom"].as_array().unwrap();
    assert_eq!(from.len(), 1);
    assert_eq!(from[0]["configMapRef"]["name"], config["metadata"]["name"]);
    let secret_name = str_of(secret, "/metadata/name");
    let secret_data = string_map(secret.pointer("/stringData"));
    let mut secret_keys_used = BTreeSet::new();
    let env = env_of(c);
    for (name, e) in &env {
        assert!(
            !string_map(config.pointer("/data")).contains_key(name),
            "{name} both in the ConfigMap and the Deployment"
        );
        if let Some(r) = e.pointer("/valueFrom/secretKeyRef") {
            assert_eq!(r["name"], secret_name, "{name}");
            let key = str_of(r, "/key");
            assert!(
                secret_data.contains_key(key),
                "{name}: no key {key} in the Secret"
            );
            secret_keys_used.insert(key.to_string());
        } else {
            assert!(e["value"].is_string(), "{name}: {e}");
        }
    }
    let volumes: BTreeMap<String, Value> = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (str_of(v, "/name").to_string(), v.clone()))
        .collect();
    let mounts: Vec<(&str, &str)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (str_of(m, "/name"), str_of(m, "/mountPath")))
        .collect();
    for (volume, _) in &mounts {
        assert!(volumes.contains_key(*volume), "no volume {volume}");
    }
    // Each `*_FILE` setting names a file of the mounted Secret.
    for (name, e) in env.iter().filter(|(n, _)| n.ends_with("_FILE")) {
        let path = Path::new(str_of(e, "/value"));
        let (volume, dir) = mounts
            .iter()
            .find(|(_, m)| path.parent() == Some(Path::new(m)))
            .unwrap_or_else(|| panic!("{name}: {} is in no mount", path.display()));
        let v = &volumes[*volume]["secret"];
        assert_eq!(
            v["secretName"], secret_name,
            "{name}: {volume} is not the Secret"
        );
        let file = path.file_name().unwrap().to_str().unwrap();
        let item = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["path"] == file)
            .unwrap_or_else(|| panic!("{name}: no item {file} in {dir}"));
        let key = str_of(item, "/key");
        assert!(
            secret_data.contains_key(key),
            "{name}: no key {key} in the Secret"
        );
        secret_keys_used.insert(key.to_string());
    }
    // Every key of the Secret is used (no forgotten placeholder), and every value is a placeholder.
    assert_eq!(
        secret_keys_used,
        secret_data.keys().cloned().collect::<BTreeSet<_>>()
    );
    for (k, v) in &secret_data {
        assert!(
            v.contains("REPLACE-ME"),
            "{k} is not marked as a placeholder"
        );
    }

    // No privilege; a read-only root, so whatever the server writes is on a volume: its data directory
    // and /tmp.
    let psc = &pod["spec"]["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_ne!(psc["runAsUser"], 0);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(sc.get("privileged").is_none() && sc["capabilities"].get("add").is_none());
    let data_dir = str_of(&env["IMS_DATA_DIR"], "/value");
    for dir in [data_dir, "/tmp"] {
        let (volume, _) = mounts
            .iter()
            .find(|(_, m)| *m == dir)
            .unwrap_or_else(|| panic!("{dir} is not a mount"));
        assert!(
            volumes[*volume]["emptyDir"].is_object(),
            "{dir}: not an emptyDir"
        );
    }
    // Memory bounded.
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());

    // The job pods run the server's image, this release.
    let image = str_of(c, "/image");
    assert_eq!(str_of(config, "/data/IMS_KUBERNETES_IMAGE"), image);
    assert!(
        image.ends_with(&format!("/ims-rs:{}", env!("CARGO_PKG_VERSION"))),
        "{image} is not ims-rs:{}",
        env!("CARGO_PKG_VERSION")
    );
}

/// An image set in the kustomization (the site registry, another release) is the Deployment's and the
/// job pods' (IMS_KUBERNETES_IMAGE).
#[test]
fn an_image_set_in_the_kustomization_reaches_the_job_pods() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("kubernetes");
    std::fs::create_dir(&copy).unwrap();
    for f in yaml_files(&deploy_dir()) {
        std::fs::copy(&f, copy.join(f.file_name().unwrap())).unwrap();
    }
    let k = copy.join("kustomization.yaml");
    let text = std::fs::read_to_string(&k).unwrap();
    let at = text.find("\nimages:\n").expect("an images: list");
    std::fs::write(
        &k,
        format!(
            "{}\nimages:\n  - name: registry.local/ims-rs\n    newName: site.example/ims/ims-rs\n    newTag: 9.9.9\n",
            &text[..at]
        ),
    )
    .unwrap();
    let o = Objects(documents(&kustomize(&copy)));
    let want = "site.example/ims/ims-rs:9.9.9";
    assert_eq!(
        str_of(server_container(o.get("Deployment", "cray-ims")), "/image"),
        want
    );
    assert_eq!(
        str_of(
            o.get("ConfigMap", "ims-config"),
            "/data/IMS_KUBERNETES_IMAGE"
        ),
        want
    );
}

/// Kubernetes probes send no token: the probes' paths answer 200 without one on a server that requires
/// one elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_hit_paths_the_server_serves_without_a_token() {
    let o = rendered();
    let c = server_container(o.get("Deployment", "cray-ims")).clone();
    let s = builder(Db::Sqlite)
        .await
        .env("IMS_API_TOKEN", "admin-secret")
        .start()
        .await;
    let get = |path: String| {
        let url = format!("{}{path}", s.url);
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    assert_eq!(
        get("/v3/images".into()).await,
        401,
        "the server requires a token"
    );
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let path = str_of(&c, &format!("/{probe}/httpGet/path")).to_string();
        assert!(path.starts_with("/healthz/"), "{probe}: {path}");
        assert_eq!(get(path.clone()).await, 200, "{probe}: {path}");
    }
}

/// Every `IMS_*` name in the manifests and their README, and every ConfigMap key and Deployment
/// variable, is a setting of `ims serve`.
#[test]
fn every_setting_named_is_one_ims_serve_knows() {
    let known = serve_settings();
    let o = rendered();
    let mut named: BTreeMap<String, String> = BTreeMap::new();
    let mut sources = manifest_files();
    sources.push(deploy_dir().join("README.md"));
    for f in &sources {
        for w in ims_words(&std::fs::read_to_string(f).unwrap()) {
            named.insert(w, f.display().to_string());
        }
    }
    for k in string_map(o.get("ConfigMap", "ims-config").pointer("/data")).keys() {
        named.insert(k.clone(), "the ConfigMap".into());
    }
    for k in env_of(server_container(o.get("Deployment", "cray-ims"))).keys() {
        named.insert(k.clone(), "the Deployment".into());
    }
    let unknown: Vec<String> = named
        .iter()
        .filter(|(n, _)| !known.contains(*n))
        .map(|(n, w)| format!("{n} ({w})"))
        .collect();
    assert!(unknown.is_empty(), "not settings of ims serve: {unknown:?}");
}

/// `ims serve` accepts the settings as deployed: the ConfigMap and the Deployment's environment, the
/// Secret's values (placeholders) and files, go through the settings' parsers; start-up then fails only
/// at the database (unreachable here).
#[test]
fn ims_serve_accepts_the_deployed_settings() {
    let o = rendered();
    let deployment = o.get("Deployment", "cray-ims");
    let c = server_container(deployment);
    let secret = string_map(o.get("Secret", "ims-secrets").pointer("/stringData"));
    let tmp = tempfile::tempdir().unwrap();
    let mut env: BTreeMap<String, String> =
        string_map(o.get("ConfigMap", "ims-config").pointer("/data"));
    for (name, e) in env_of(c) {
        let value = match e.pointer("/valueFrom/secretKeyRef/key") {
            Some(k) => secret[k.as_str().unwrap()].clone(),
            None => str_of(&e, "/value").to_string(),
        };
        env.insert(name, value);
    }
    // Paths of the pod, here: the data directory and the Secret's files.
    env.insert(
        "IMS_DATA_DIR".into(),
        tmp.path().join("data").display().to_string(),
    );
    for (name, value) in env.iter_mut().filter(|(n, _)| n.ends_with("_FILE")) {
        let file = Path::new(value.as_str()).file_name().unwrap().to_owned();
        let key = file.to_str().unwrap();
        let local = tmp.path().join(&file);
        std::fs::write(&local, &secret[key]).unwrap_or_else(|e| panic!("{name}: {e}"));
        *value = local.display().to_string();
    }
    // A database that refuses connections (the Secret's host does not resolve here).
    let port = free_port();
    env.insert(
        "IMS_DATABASE_URL".into(),
        format!("postgres://ims@127.0.0.1:{port}/ims"),
    );
    let serve = |env: &BTreeMap<String, String>| {
        let out = Command::new(ims_bin())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Every one is accepted: start-up fails only at the database.
    let (code, err) = serve(&env);
    assert!(
        code == Some(1) && err.contains("cannot open the records store"),
        "{code:?}: {err}"
    );
}

/// `ims serve` runs as the pod's security context says: the Deployment's user, group and fsGroup (a
/// supplementary group), the root filesystem read-only with only the data directory and `/tmp` writable
/// (the emptyDirs), the Secret's files mounted with the volume's mode (root's, readable through the
/// fsGroup). It starts, answers the probes and writes a record. Root needed (a private mount namespace).
/// The built-in S3 endpoint stands in for the external S3 (its objects go to the data directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ims_serve_runs_as_the_pod_security_context_says() {
    if !crate::common::jobs::is_root() {
        eprintln!("skipped: needs root (a mount namespace with a read-only root)");
        return;
    }
    let o = rendered();
    let deployment = o.get("Deployment", "cray-ims");
    let pod = &deployment["spec"]["template"]["spec"];
    let id = |k: &str| pod["securityContext"][k].as_u64().unwrap().to_string();
    let (user, group, fs_group) = (id("runAsUser"), id("runAsGroup"), id("fsGroup"));
    let c = server_container(deployment);
    let env_in_pod = env_of(c);
    // The files of the Secret's volume, with real values, as the kubelet writes them.
    let secret_volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["secret"].is_object())
        .unwrap();
    let mode = secret_volume["secret"]["defaultMode"].as_u64().unwrap() as u32;
    // Under /var/tmp: /tmp is replaced by an empty tmpfs in the server's mount namespace.
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = tmp.path();
    std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (data, secrets) = (root.join("data"), root.join("secrets"));
    std::fs::create_dir(&data).unwrap();
    std::fs::create_dir(&secrets).unwrap();
    let chown = |p: &Path, owner: &str| {
        let st = Command::new("chown").arg(owner).arg(p).status().unwrap();
        assert!(st.success());
    };
    // An emptyDir belongs to root and is writable by all.
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let token = "deployment-test-admin-token";
    let values = BTreeMap::from([
        ("api-token", token.to_string()),
        ("job-token.key", "ab".repeat(32)),
    ]);
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (name, e) in &env_in_pod {
        let Some(path) = e["value"].as_str().filter(|_| name.ends_with("_FILE")) else {
            continue;
        };
        let file = Path::new(path).file_name().unwrap().to_str().unwrap();
        let local = secrets.join(file);
        std::fs::write(&local, &values[file]).unwrap();
        chown(&local, &format!("0:{fs_group}"));
        std::fs::set_permissions(&local, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .unwrap();
        env.insert(name.clone(), local.display().to_string());
    }
    assert_eq!(env.len(), 2, "the API token and the job-token key files");
    for (k, v) in string_map(o.get("ConfigMap", "ims-config").pointer("/data")) {
        if !k.starts_with("IMS_S3_") || k.ends_with("_BUCKET") {
            env.insert(k, v);
        }
    }
    env.insert("IMS_JOB_EXECUTOR".into(), "none".into());
    env.insert("IMS_DATA_DIR".into(), data.display().to_string());
    if !ims_store::testing::skip_postgres() {
        env.insert(
            "IMS_DATABASE_URL".into(),
            ims_store::testing::postgres_url().await,
        );
    }
    let port = free_port();
    let script = r#"set -e
mount --bind "$1" "$1"
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -o remount,ro,bind /
if touch /ims-deploy-test 2>/dev/null; then echo "the root is writable" >&2; exit 99; fi
shift
exec "$@""#;
    let mut child = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&data)
        .args([
            "setpriv", "--reuid", &user, "--regid", &group, "--groups", &fs_group,
        ])
        .args(["--no-new-privs", ims_bin(), "serve"])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--s3-listen",
            "127.0.0.1:0",
        ])
        .current_dir("/")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&env)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..300 {
        if client
            .get(format!("{url}/healthz/live"))
            .send()
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The process serving is the pod's user, groups included.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let post = client
        .post(format!("{url}/v3/recipes"))
        .bearer_auth(token)
        .json(&serde_json::json!({"name": "deploy", "linux_distribution": "sles15", "recipe_type": "kiwi-ng"}))
        .send()
        .await
        .map(|r| r.status().as_u16());
    let ready = client
        .get(format!("{url}/healthz/ready"))
        .send()
        .await
        .map(|r| r.status().as_u16());
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(up, "ims serve did not start: {log}");
    let line = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(line("Uid:"), vec![user.as_str(); 4], "{status}");
    assert_eq!(line("Gid:"), vec![group.as_str(); 4], "{status}");
    assert_eq!(line("Groups:"), vec![fs_group.as_str()], "{status}");
    assert_eq!(ready.ok(), Some(200), "{log}");
    assert_eq!(post.ok(), Some(201), "{log}");
}

// ---- names and labels, for every object ----

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 (RFC 1123 label).
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Labels joined by dots, at most 253 (RFC 1123 subdomain).
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

/// A label value (and a key's name part): at most 63, `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
fn label_value(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    s.is_empty()
        || (s.len() <= 63
            && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
            && s.starts_with(alnum)
            && s.ends_with(alnum))
}

fn label_key(k: &str) -> bool {
    match k.rsplit_once('/') {
        Some((prefix, name)) => dns_subdomain(prefix) && !name.is_empty() && label_value(name),
        None => !k.is_empty() && label_value(k),
    }
}

/// The problems of an object's name and labels (its pod template's too).
fn name_and_label_problems(o: &Value) -> Vec<String> {
    let kind = str_of(o, "/kind");
    let name = str_of(o, "/metadata/name");
    let mut problems = vec![];
    // Services and Namespaces are DNS labels; a Job's name becomes its pods' `job-name` label (63);
    // the rest are DNS subdomains.
    let ok = match kind {
        "Service" | "Namespace" => {
            dns_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase())
        }
        "Job" => dns_subdomain(name) && label_value(name),
        _ => dns_subdomain(name),
    };
    if !ok {
        problems.push(format!("{kind} {name}: not a valid name"));
    }
    for labels in [
        o.pointer("/metadata/labels"),
        o.pointer("/spec/template/metadata/labels"),
    ] {
        for (k, v) in string_map(labels) {
            if !label_key(&k) || !label_value(&v) {
                problems.push(format!("{kind} {name}: label {k}={v}"));
            }
        }
    }
    problems
}

#[test]
fn names_and_labels_are_valid() {
    let mut objects: Vec<(String, Vec<Value>)> = vec![("deploy/kubernetes".into(), rendered().0)];
    for f in golden_files() {
        objects.push((f.display().to_string(), file_documents(&f)));
    }
    let mut problems = vec![];
    for (file, docs) in &objects {
        for o in docs {
            problems.extend(
                name_and_label_problems(o)
                    .into_iter()
                    .map(|p| format!("{file}: {p}")),
            );
        }
        // A file with a Service and a Job: the Service selects the Job's pods.
        let o = Objects(docs.clone());
        if let ([svc], [job]) = (&o.of_kind("Service")[..], &o.of_kind("Job")[..]) {
            let pod = string_map(job.pointer("/spec/template/metadata/labels"));
            if !selects(&string_map(svc.pointer("/spec/selector")), &pod) {
                problems.push(format!(
                    "{file}: the Service does not select the Job's pods"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // The checks themselves.
    assert!(dns_label("cray-ims-0123-service") && !dns_label("Cray") && !dns_label("a-"));
    assert!(!dns_label(&"a".repeat(64)));
    assert!(label_key("app.kubernetes.io/name") && label_key("app") && !label_key("a/b/c"));
    assert!(label_value("ims-job") && label_value("") && !label_value("-x") && !label_value("a b"));
    let bad = serde_json::json!({"kind": "Job", "metadata": {"name": format!("cray-ims-{}-customize", "0".repeat(50)),
        "labels": {"ims.hpe.com/job-id": "UPPER ok?"}}});
    assert_eq!(name_and_label_problems(&bad).len(), 2, "{bad}");
}
