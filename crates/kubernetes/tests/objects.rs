//! The objects of a job: golden files (`tests/golden/*.json`, one object per file, validated
//! against the Kubernetes schemas by the `kube_manifests` suite of the `ims` crate), and the
//! original's names, labels, ports and volumes checked field by field.
//!
//! `IMS_UPDATE_GOLDEN=1 cargo test -p ims-kubernetes --test objects` rewrites the golden files.

use ims_core::agent_env::AgentSettings;
use ims_core::{Arch, Job, JobType};
use ims_kubernetes::objects::{CAPABILITIES, KubeSettings, Scratch, ServiceType};
use ims_kubernetes::{JobObjects, job_objects};
use ims_server::ServiceConfig;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

const ID: &str = "4a1b2c3d-5e6f-4a8b-9c0d-1e2f3a4b5c6d";
const TOKEN: &str = "ims-job.4a1b2c3d-5e6f-4a8b-9c0d-1e2f3a4b5c6d.1767225600.0123456789abcdef";

fn job(job_type: JobType, arch: Arch, jail: bool) -> Job {
    let containers = match job_type {
        JobType::Customize => json!([{"name": "customize", "jail": jail, "status": "pending",
            "connection_info": {
                "customer_access": {"host": format!("{ID}.ims.cmn.shasta.local"), "port": 22},
                "cluster.local": {"host": format!("cray-ims-{ID}-service.ims.svc.cluster.local"), "port": 22}}}]),
        JobType::Create => Value::Null,
    };
    serde_json::from_value(json!({
        "arch": arch.as_str(), "artifact_id": "9f3e0e55-7f2b-4a51-9d3c-5b7d4c1e2a10",
        "build_env_size": 15, "created": "2026-12-05T01:00:00", "id": ID,
        "image_root_archive_name": "compute", "job_mem_size": 4,
        "job_type": job_type.as_str(), "kubernetes_namespace": "ims",
        "public_key_id": "7b0f5c2e-3d4a-4e1b-8c9d-0a1b2c3d4e5f",
        "ssh_containers": containers, "status": "creating"
    }))
    .unwrap()
}

fn settings() -> KubeSettings {
    KubeSettings {
        image: "registry.local/ims-rs:0.1.0".into(),
        api_url: "http://cray-ims.services.svc.cluster.local:9000".into(),
        agent: AgentSettings {
            boot_images_bucket: Some("boot-images".into()),
            // Paths on the server's host: never passed to pods.
            ca_cert: Some("/etc/ims/site-ca.pem".into()),
            kiwi: Some("/opt/kiwi/bin/kiwi-ng".into()),
            kiwi_cache: Some("/var/lib/ims/kiwi-cache".into()),
            signing_keys: Some(vec!["/etc/ims/keys".into()]),
            ..Default::default()
        },
        ca_cert: None,
        service_type: ServiceType::LoadBalancer,
        service_annotations: vec![
            (
                "external-dns.alpha.kubernetes.io/hostname".into(),
                "{hostname}".into(),
            ),
            ("metallb.universe.tf/address-pool".into(), "{pool}".into()),
        ],
        address_pool: "customer-management".into(),
        storage_class: None,
        scratch: Scratch::Pvc,
        runtime_class: None,
        service_account: None,
        active_deadline: Duration::from_secs(48 * 3600),
        ttl_after_finished: Duration::from_secs(7 * 24 * 3600),
        destination_rule: false,
        emulate_aarch64: false,
    }
}

/// The cases the golden files cover.
fn cases() -> Vec<(&'static str, JobObjects)> {
    let cfg = ServiceConfig::default();
    let base = settings();
    let kata = KubeSettings {
        runtime_class: Some("kata-qemu".into()),
        service_account: Some("ims-service-job-mount".into()),
        ca_cert: Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into()),
        destination_rule: true,
        storage_class: Some("ceph-rbd".into()),
        ..base.clone()
    };
    let lab = KubeSettings {
        scratch: Scratch::EmptyDir,
        service_type: ServiceType::ClusterIp,
        service_annotations: vec![],
        ..base.clone()
    };
    let emulated = KubeSettings {
        emulate_aarch64: true,
        service_annotations: vec![("metallb.io/address-pool".into(), "{pool}".into())],
        ..base.clone()
    };
    let o = |s: &KubeSettings, t, a, jail| job_objects(&cfg, s, &job(t, a, jail), TOKEN);
    vec![
        (
            "customize",
            o(&base, JobType::Customize, Arch::X86_64, false),
        ),
        (
            "customize-jail-emptydir-clusterip",
            o(&lab, JobType::Customize, Arch::X86_64, true),
        ),
        (
            "create-kata",
            o(&kata, JobType::Create, Arch::X86_64, false),
        ),
        (
            "create-aarch64",
            o(&base, JobType::Create, Arch::Aarch64, false),
        ),
        (
            "customize-aarch64-emulated",
            o(&emulated, JobType::Customize, Arch::Aarch64, false),
        ),
    ]
}

fn all(o: &JobObjects) -> Vec<(&'static str, Value)> {
    let mut v = vec![("secret", with_kind(&o.secret, "v1", "Secret"))];
    if let Some(p) = &o.pvc {
        v.push(("pvc", with_kind(p, "v1", "PersistentVolumeClaim")));
    }
    v.push(("service", with_kind(&o.service, "v1", "Service")));
    if let Some(d) = &o.destination_rule {
        v.push(("destinationrule", d.clone()));
    }
    v.push(("job", with_kind(&o.job, "batch/v1", "Job")));
    v
}

/// k8s-openapi types serialize `apiVersion` and `kind` themselves; checked here.
fn with_kind<T: serde::Serialize>(o: &T, api_version: &str, kind: &str) -> Value {
    let v = serde_json::to_value(o).unwrap();
    assert_eq!(v["apiVersion"], api_version);
    assert_eq!(v["kind"], kind);
    v
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn objects_match_the_golden_files() {
    let dir = golden_dir();
    let update = std::env::var_os("IMS_UPDATE_GOLDEN").is_some();
    let mut expected = vec![];
    for (case, o) in cases() {
        for (what, v) in all(&o) {
            let name = format!("{case}-{what}.json");
            let text = serde_json::to_string_pretty(&v).unwrap() + "\n";
            let path = dir.join(&name);
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &text).unwrap();
            } else {
                let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                    panic!("{}: {e} (IMS_UPDATE_GOLDEN=1 writes it)", path.display())
                });
                assert_eq!(
                    golden, text,
                    "{name} differs from what the builders make (IMS_UPDATE_GOLDEN=1 rewrites it; review the diff)"
                );
            }
            expected.push(name);
        }
    }
    // No stale golden file (they are all validated against the schemas).
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    present.sort();
    expected.sort();
    assert_eq!(present, expected, "golden files without a case");
}

fn pod_spec(o: &JobObjects) -> Value {
    serde_json::to_value(&o.job).unwrap()["spec"]["template"].clone()
}

/// What the original's templates and the CSM documentation rely on, field by field.
#[test]
fn names_labels_ports_and_volumes_are_the_originals() {
    let cfg = ServiceConfig::default();
    for (t, suffix) in [
        (JobType::Customize, "customize"),
        (JobType::Create, "create"),
    ] {
        let o = job_objects(&cfg, &settings(), &job(t, Arch::X86_64, false), TOKEN);
        let job_name = format!("cray-ims-{ID}-{suffix}");
        assert_eq!(o.job.metadata.name.as_deref(), Some(job_name.as_str()));
        // The Job controller puts the Job's name into the pod's `job-name` label: ≤ 63.
        assert!(job_name.len() <= 63, "{job_name}");
        assert_eq!(o.job.metadata.namespace.as_deref(), Some("ims"));
        let svc = serde_json::to_value(&o.service).unwrap();
        assert_eq!(svc["metadata"]["name"], format!("cray-ims-{ID}-service"));
        assert_eq!(svc["spec"]["type"], "LoadBalancer");
        assert_eq!(
            svc["spec"]["ports"],
            json!([{"name": "ssh", "port": 22, "protocol": "TCP", "targetPort": 22}])
        );
        assert_eq!(
            svc["spec"]["selector"],
            json!({"app": format!("ims-{ID}-{suffix}")})
        );
        assert_eq!(
            svc["metadata"]["annotations"],
            json!({
                "external-dns.alpha.kubernetes.io/hostname": format!("{ID}.ims.cmn.shasta.local"),
                "metallb.universe.tf/address-pool": "customer-management"
            })
        );
        let pvc = serde_json::to_value(o.pvc.as_ref().unwrap()).unwrap();
        assert_eq!(pvc["metadata"]["name"], format!("cray-ims-{ID}-job-claim"));
        assert_eq!(pvc["spec"]["accessModes"], json!(["ReadWriteOnce"]));
        assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "75Gi");
        let spec = serde_json::to_value(&o.job).unwrap()["spec"].clone();
        assert_eq!(spec["backoffLimit"], 0);
        let tpl = pod_spec(&o);
        let labels = &tpl["metadata"]["labels"];
        assert_eq!(labels["app"], format!("ims-{ID}-{suffix}"));
        assert_eq!(labels["app.kubernetes.io/name"], "ims-job");
        // The Service selects the pod.
        for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
            assert_eq!(&labels[k], v);
        }
        let pod = &tpl["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(
            pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
                [0]["podAffinityTerm"],
            json!({"labelSelector": {"matchLabels": {"app.kubernetes.io/name": "ims-job"}},
                "topologyKey": "kubernetes.io/hostname"})
        );
        let c = &pod["containers"][0];
        assert_eq!(pod["containers"].as_array().unwrap().len(), 1);
        assert_eq!(c["name"], "buildenv-sidecar");
        assert_eq!(
            c["volumeMounts"],
            json!([{"mountPath": "/mnt/image", "name": "image-vol"},
                {"mountPath": "/dev/net/tun", "name": "tun"}])
        );
        assert_eq!(
            pod["volumes"][1],
            json!({"name": "tun", "hostPath": {"path": "/dev/net/tun", "type": "CharDevice"}})
        );
        assert_eq!(
            pod["volumes"][0],
            json!({"name": "image-vol", "persistentVolumeClaim": {"claimName": format!("cray-ims-{ID}-job-claim")}})
        );
        assert_eq!(
            c["ports"],
            json!([{"containerPort": 22, "name": "ssh", "protocol": "TCP"}])
        );
        // job_mem_size: the request; 5 × that the limit (the original's).
        assert_eq!(c["resources"]["requests"]["memory"], "4Gi");
        assert_eq!(c["resources"]["limits"]["memory"], "20Gi");
        // Every object carries the labels the executor selects by.
        for (_, v) in all(&o) {
            assert_eq!(
                v["metadata"]["labels"]["app.kubernetes.io/managed-by"],
                "ims-rs"
            );
            assert_eq!(v["metadata"]["labels"]["ims.hpe.com/job-id"], ID);
            assert_eq!(v["metadata"]["labels"]["ims.hpe.com/job-type"], suffix);
        }
    }
}

#[test]
fn the_token_is_only_in_the_secret_and_host_paths_stay_home() {
    for (case, o) in cases() {
        let job = serde_json::to_string(&o.job).unwrap();
        assert!(!job.contains(TOKEN), "{case}: the token is in the pod spec");
        let env = &pod_spec(&o)["spec"]["containers"][0]["env"];
        let token = env
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "IMS_TOKEN")
            .unwrap();
        assert_eq!(
            token["valueFrom"]["secretKeyRef"],
            json!({"name": format!("cray-ims-{ID}-token"), "key": "token", "optional": false})
        );
        let secret = serde_json::to_value(&o.secret).unwrap();
        use base64::Engine as _;
        let stored = base64::engine::general_purpose::STANDARD
            .decode(secret["data"]["token"].as_str().unwrap())
            .unwrap();
        assert_eq!(stored, TOKEN.as_bytes(), "{case}");
        for host_path in [
            "/etc/ims/site-ca.pem",
            "/opt/kiwi",
            "/var/lib/ims",
            "/etc/ims/keys",
        ] {
            assert!(
                !job.contains(host_path),
                "{case}: {host_path} in the pod spec"
            );
        }
        let names: Vec<&str> = env
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            &names[..4],
            ["PATH", "IMS_URL", "IMS_TOKEN", "IMS_AGENT_DIR"],
            "{case}"
        );
        let value = |n: &str| {
            env.as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == n)
                .map(|e| e["value"].clone())
        };
        assert_eq!(value("IMS_AGENT_DIR"), Some(json!("/mnt/image")));
        assert_eq!(value("IMS_AGENT_SSH_PORTS"), Some(json!("22")));
        assert_eq!(
            value("IMS_AGENT_SSH_HOST"),
            Some(json!(format!(
                "cray-ims-{ID}-service.ims.svc.cluster.local"
            )))
        );
        assert_eq!(
            value("IMS_AGENT_SSH_LISTEN"),
            None,
            "{case}: every address of the pod"
        );
    }
}

#[test]
fn kata_annotation_on_both_job_types_and_privileges_are_bounded() {
    for (case, o) in cases() {
        let tpl = pod_spec(&o);
        let kata = tpl["spec"]["runtimeClassName"].as_str();
        let ann = &tpl["metadata"]["annotations"];
        assert_eq!(
            ann["io.katacontainers.config.hypervisor.virtio_fs_extra_args"].as_str(),
            kata.map(|_| r#"["-o","xattr"]"#),
            "{case}"
        );
        let sc = &tpl["spec"]["containers"][0]["securityContext"];
        assert_eq!(sc["privileged"], false, "{case}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["capabilities"]["add"], json!(CAPABILITIES));
        // No API token in a job pod unless a service account is configured for it.
        assert_eq!(
            tpl["spec"]["automountServiceAccountToken"],
            tpl["spec"]["serviceAccountName"].is_string(),
            "{case}"
        );
    }
    let by_case: std::collections::HashMap<_, _> = cases().into_iter().collect();
    assert!(pod_spec(&by_case["create-kata"])["spec"]["runtimeClassName"] == "kata-qemu");
    assert!(pod_spec(&by_case["customize"])["spec"]["runtimeClassName"].is_null());
    let arch =
        |c: &str| pod_spec(&by_case[c])["spec"]["nodeSelector"]["kubernetes.io/arch"].clone();
    assert_eq!(arch("customize"), "amd64");
    assert_eq!(arch("create-aarch64"), "arm64");
    assert_eq!(arch("customize-aarch64-emulated"), "amd64");
    // emptyDir: no PVC, the same size limit.
    let lab = &by_case["customize-jail-emptydir-clusterip"];
    assert!(lab.pvc.is_none());
    assert_eq!(
        pod_spec(lab)["spec"]["volumes"][0],
        json!({"name": "image-vol", "emptyDir": {"sizeLimit": "75Gi"}})
    );
    // The CA comes from the Secret, read-only.
    let kata = &by_case["create-kata"];
    let spec = pod_spec(kata)["spec"].clone();
    assert_eq!(
        spec["volumes"][2],
        json!({"name": "ca", "secret": {"secretName": format!("cray-ims-{ID}-token"),
            "items": [{"key": "ca.crt", "path": "ca.crt", "mode": 0o444}]}})
    );
}
