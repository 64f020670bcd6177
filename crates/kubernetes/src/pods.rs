//! What a job pod's state says: nothing (it is starting or runs), or why its job cannot go on.
//! The agent's heartbeat remains the main sign of life; this catches what happens before the
//! agent runs (the pod is never scheduled, its image cannot be pulled) or what kills it without a
//! word (eviction, the OOM killer, the pod's deadline), which the original never noticed.

use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use std::time::Duration;

/// Container waiting reasons that do not go away by waiting.
const IMAGE_FAILURES: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
];

fn name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("?")
}

fn with_message(what: String, message: Option<&str>) -> String {
    match message.map(str::trim).filter(|m| !m.is_empty()) {
        Some(m) => format!("{what}: {}", first_line(m)),
        None => what,
    }
}

/// Messages come from the cluster: one line, bounded, so a job log cannot be flooded.
fn first_line(m: &str) -> String {
    let line = m.lines().next().unwrap_or_default();
    let mut out: String = line.chars().filter(|c| !c.is_control()).take(500).collect();
    if line.chars().count() > 500 {
        out.push('…');
    }
    out
}

fn terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|c| c.state.as_ref()?.terminated.as_ref())
}

/// Whether `pod` is still being scheduled or started (its agent cannot heartbeat yet).
pub fn is_pending(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_none_or(|p| p == "Pending")
}

/// Whether `pod` is pending or running (its container has not ended).
pub fn is_live(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_none_or(|p| p == "Pending" || p == "Running" || p == "Unknown")
}

/// Whether the cluster ended `pod` (eviction, its deadline, the OOM killer) rather than its
/// container exiting by itself.
pub fn killed_from_outside(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    matches!(
        status.reason.as_deref(),
        Some("Evicted" | "DeadlineExceeded")
    ) || terminated(pod).is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"))
}

/// Why the job of `pod` cannot go on, if it cannot. `age`: how long ago the pod was created;
/// `pending_limit`: how long it may take to be scheduled and started.
pub fn failure(pod: &Pod, age: Duration, pending_limit: Duration) -> Option<String> {
    let pod_name = name(pod);
    let status = pod.status.as_ref()?;
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let limit = |pod: &Pod| {
        pod.spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.resources.as_ref()?.limits.as_ref()?.get("memory"))
            .map(|q| q.0.clone())
    };
    match phase {
        "Failed" => {
            let reason = status.reason.as_deref().unwrap_or_default();
            let message = status.message.as_deref();
            Some(match (reason, terminated(pod)) {
                ("Evicted", _) => {
                    with_message(format!("the job's pod {pod_name} was evicted"), message)
                }
                ("DeadlineExceeded", _) => with_message(
                    format!(
                        "the job's pod {pod_name} ran past its deadline (activeDeadlineSeconds)"
                    ),
                    message,
                ),
                (_, Some(t)) if t.reason.as_deref() == Some("OOMKilled") => format!(
                    "the job's pod {pod_name} was killed for lack of memory (OOMKilled; memory limit {}): raise the job's job_mem_size",
                    limit(pod).unwrap_or_else(|| "none".into())
                ),
                (_, Some(t)) => with_message(
                    format!(
                        "the job's pod {pod_name} failed: its container exited with code {}{}",
                        t.exit_code,
                        t.reason
                            .as_deref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    ),
                    t.message.as_deref(),
                ),
                (r, None) => with_message(
                    format!(
                        "the job's pod {pod_name} failed{}",
                        if r.is_empty() {
                            String::new()
                        } else {
                            format!(" ({r})")
                        }
                    ),
                    message,
                ),
            })
        }
        "Succeeded" => Some(format!(
            "the job's pod {pod_name} ended before the job finished"
        )),
        "Pending" => {
            let waiting = status
                .container_statuses
                .iter()
                .flatten()
                .find_map(|c| c.state.as_ref()?.waiting.as_ref());
            if let Some(w) = waiting
                && IMAGE_FAILURES.contains(&w.reason.as_deref().unwrap_or_default())
            {
                let image = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.image.clone())
                    .unwrap_or_default();
                return Some(with_message(
                    format!(
                        "the job's pod {pod_name} cannot pull its image {image} ({})",
                        w.reason.as_deref().unwrap_or_default()
                    ),
                    w.message.as_deref(),
                ));
            }
            if age <= pending_limit {
                return None;
            }
            let unscheduled = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False");
            let why = match (unscheduled, waiting) {
                (Some(c), _) => with_message(
                    format!(
                        "it was not scheduled ({})",
                        c.reason.as_deref().unwrap_or("Unschedulable")
                    ),
                    c.message.as_deref(),
                ),
                (None, Some(w)) => with_message(
                    format!(
                        "its container is waiting ({})",
                        w.reason.as_deref().unwrap_or("unknown")
                    ),
                    w.message.as_deref(),
                ),
                (None, None) => "it is still pending".to_string(),
            };
            Some(format!(
                "the job's pod {pod_name} did not start within {} s: {why}",
                pending_limit.as_secs()
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "cray-ims-1-customize-abcde"},
            "spec": {"containers": [{"name": "buildenv-sidecar", "image": "reg/ims-rs:1",
                "resources": {"limits": {"memory": "40Gi"}}}]},
            "status": status,
        }))
        .unwrap()
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn running_and_young_pending_pods_are_fine() {
        assert_eq!(failure(&pod(json!({"phase": "Running"})), MIN, MIN), None);
        let unscheduled = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
            "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient memory."}]}),
        );
        assert_eq!(failure(&unscheduled, MIN, MIN * 10), None);
        let why = failure(&unscheduled, MIN * 11, MIN * 10).unwrap();
        assert_eq!(
            why,
            "the job's pod cray-ims-1-customize-abcde did not start within 600 s: it was not scheduled (Unschedulable): 0/3 nodes are available: 3 Insufficient memory."
        );
        let creating = pod(
            json!({"phase": "Pending", "containerStatuses": [{"name": "buildenv-sidecar",
            "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
        );
        assert_eq!(failure(&creating, MIN, MIN * 10), None);
        assert!(
            failure(&creating, MIN * 11, MIN * 10)
                .unwrap()
                .ends_with("its container is waiting (ContainerCreating)")
        );
    }

    #[test]
    fn image_pull_failures_end_the_job_at_once() {
        for reason in IMAGE_FAILURES {
            let p = pod(
                json!({"phase": "Pending", "containerStatuses": [{"name": "buildenv-sidecar",
                "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": "manifest unknown\nsecond line"}}}]}),
            );
            assert_eq!(
                failure(&p, Duration::ZERO, MIN).unwrap(),
                format!(
                    "the job's pod cray-ims-1-customize-abcde cannot pull its image reg/ims-rs:1 ({reason}): manifest unknown"
                )
            );
        }
    }

    #[test]
    fn evictions_oom_deadlines_and_exits_are_named() {
        let evicted = pod(json!({"phase": "Failed", "reason": "Evicted",
            "message": "The node was low on resource: memory."}));
        assert_eq!(
            failure(&evicted, MIN, MIN).unwrap(),
            "the job's pod cray-ims-1-customize-abcde was evicted: The node was low on resource: memory."
        );
        let oom = pod(
            json!({"phase": "Failed", "containerStatuses": [{"name": "buildenv-sidecar",
            "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}),
        );
        assert!(
            failure(&oom, MIN, MIN)
                .unwrap()
                .contains("killed for lack of memory (OOMKilled; memory limit 40Gi)")
        );
        let deadline = pod(json!({"phase": "Failed", "reason": "DeadlineExceeded",
            "message": "Pod was active on the node longer than the specified deadline"}));
        assert!(failure(&deadline, MIN, MIN).unwrap().contains("deadline"));
        let exit = pod(
            json!({"phase": "Failed", "containerStatuses": [{"name": "buildenv-sidecar",
            "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"reason": "Error", "exitCode": 3}}}]}),
        );
        assert_eq!(
            failure(&exit, MIN, MIN).unwrap(),
            "the job's pod cray-ims-1-customize-abcde failed: its container exited with code 3 (Error)"
        );
        let done = pod(json!({"phase": "Succeeded"}));
        assert!(failure(&done, MIN, MIN).unwrap().contains("ended before"));
        for (p, outside) in [
            (&evicted, true),
            (&oom, true),
            (&deadline, true),
            (&exit, false),
            (&done, false),
        ] {
            assert_eq!(killed_from_outside(p), outside);
            assert!(!is_live(p));
        }
        assert!(is_live(&pod(json!({"phase": "Running"}))));
    }

    #[test]
    fn cluster_messages_cannot_flood_the_log() {
        let long = "x".repeat(10_000);
        let p = pod(
            json!({"phase": "Failed", "reason": "Evicted", "message": format!("{long}\n\u{1b}[2Jmore")}),
        );
        let why = failure(&p, MIN, MIN).unwrap();
        assert!(why.len() < 600, "{}", why.len());
        assert!(!why.contains('\u{1b}') && !why.contains('\n'));
    }
}
