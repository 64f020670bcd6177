//! What a job's agent and the server say to each other besides the records (extensions of the
//! API, documented in docs/compatibility.md): the heartbeat, with the agent's SSH report, and its
//! answer; and the job's session as clients see it. The agent sends these types and the server
//! reads them with [`Heartbeat::parse`], so both sides share one declaration. (The agent's job
//! updates are the API's own PATCH body, [`crate::input::JobPatch`].)

use crate::problem::Problem;
use crate::records::{JobStatus, SshStatus, UserRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

/// The longest `phase` a heartbeat may carry (also in [`Heartbeat`]'s schema).
pub const MAX_PHASE_LEN: usize = 200;

/// `POST /v3/jobs/{id}/heartbeat`: the agent is alive and says what it is doing. The body and
/// each field are optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Heartbeat {
    /// What the agent is doing (a status or a finer step), at most 200 characters.
    #[schema(max_length = 200)]
    pub phase: Option<String>,
    /// The job's SSH session, once it has one.
    #[schema(inline)]
    pub ssh: Option<SshReport>,
}

/// The SSH endpoint an agent reports: where its session listens, its state and sshd's public
/// host key (which clients pin instead of trusting on first use). The server fills the job's
/// `ssh_containers[0]` status and `connection_info` with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SshReport {
    /// A host name or address, without white space.
    #[schema(min_length = 1, max_length = 253)]
    pub host: String,
    /// An OpenSSH public key line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    #[schema(minimum = 1)]
    pub port: u16,
    #[schema(inline)]
    pub status: SshStatus,
}

/// The answer to a heartbeat: the job's status, the user's request and, for the job's own agent
/// while the job runs, a fresh job token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatAnswer {
    #[schema(inline)]
    pub request: Option<UserRequest>,
    #[schema(inline)]
    pub status: JobStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `GET /v3/jobs/{id}/session`: the job's SSH session as a client connects to it — the address
/// users reach, its state, and sshd's public host key once the agent reported it (`null` before).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobSession {
    pub host: Option<String>,
    pub host_key: Option<String>,
    pub jail: bool,
    #[schema(inline)]
    pub job_status: JobStatus,
    pub port: Option<u16>,
    #[schema(inline)]
    pub status: SshStatus,
}

/// The answer to `POST /v3/jobs/{id}/log?seq=N`: the chunk number the server expects next (a
/// repeated chunk is acknowledged with it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogAck {
    pub next: u64,
}

impl Heartbeat {
    /// Reads a heartbeat body as the server accepts it: no body or `null` is an empty heartbeat,
    /// anything but an object is 400, a bad field 422 with the field's message; unknown fields
    /// are ignored.
    pub fn parse(body: Option<&Value>) -> Result<Heartbeat, Problem> {
        let o = match body {
            None | Some(Value::Null) => return Ok(Heartbeat::default()),
            Some(Value::Object(o)) => o,
            Some(_) => return Err(Problem::bad_request("The body must be a JSON object.")),
        };
        let phase = match o.get("phase") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.len() <= MAX_PHASE_LEN => Some(s.clone()),
            Some(_) => {
                return Err(Problem::validation(
                    json!({"phase": [format!("A string of at most {MAX_PHASE_LEN} characters.")]}),
                ));
            }
        };
        let ssh = match o.get("ssh") {
            None | Some(Value::Null) => None,
            Some(v) => {
                Some(SshReport::parse(v).map_err(|m| Problem::validation(json!({"ssh": [m]})))?)
            }
        };
        Ok(Heartbeat { phase, ssh })
    }
}

impl SshReport {
    /// A report with `host_key` trimmed, as the agent sends it.
    pub fn new(host: &str, port: u16, status: SshStatus, host_key: Option<&str>) -> SshReport {
        SshReport {
            host: host.to_string(),
            host_key: host_key.map(|k| k.trim().to_string()),
            port,
            status,
        }
    }

    /// Reads the `ssh` field of a heartbeat; the error is the message for that field.
    fn parse(v: &Value) -> Result<SshReport, &'static str> {
        let host = v
            .get("host")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty() && h.len() <= 253 && !h.contains(char::is_whitespace))
            .ok_or("host: a host name or address.")?;
        let port = v
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or("port: 1 to 65535.")?;
        let status = v
            .get("status")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<SshStatus>().ok())
            .ok_or("status: pending, establishing, running or stopped.")?;
        let host_key = match v.get("host_key") {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) if crate::sshkey::check_public_key(k).is_ok() => {
                Some(k.trim().to_string())
            }
            Some(_) => return Err("host_key: one OpenSSH public key line."),
        };
        Ok(SshReport {
            host: host.to_string(),
            host_key,
            port,
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    /// The bytes the agent sent when it built the body with `json!` (keys sorted).
    #[test]
    fn heartbeats_serialise_as_before() {
        let h = Heartbeat {
            phase: Some("waiting_on_user".into()),
            ssh: None,
        };
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            r#"{"phase":"waiting_on_user","ssh":null}"#
        );
        let h = Heartbeat {
            phase: Some("p".into()),
            ssh: Some(SshReport::new("h", 2222, SshStatus::Running, Some(" k \n"))),
        };
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            r#"{"phase":"p","ssh":{"host":"h","host_key":"k","port":2222,"status":"running"}}"#
        );
        let r = SshReport::new("h", 1, SshStatus::Stopped, None);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"host":"h","port":1,"status":"stopped"}"#
        );
        let a = HeartbeatAnswer {
            request: None,
            status: JobStatus::Creating,
            token: Some("t".into()),
        };
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"request":null,"status":"creating","token":"t"}"#
        );
        let a = HeartbeatAnswer {
            request: Some(UserRequest::Complete),
            status: JobStatus::Success,
            token: None,
        };
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"request":"complete","status":"success"}"#
        );
    }

    #[test]
    fn sessions_serialise_as_before() {
        let s = JobSession {
            host: None,
            host_key: None,
            jail: true,
            job_status: JobStatus::FetchingImage,
            port: None,
            status: SshStatus::Pending,
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"host":null,"host_key":null,"jail":true,"job_status":"fetching_image","port":null,"status":"pending"}"#
        );
    }

    /// The derived schema carries the rules `parse` applies, for the OpenAPI document to reference.
    #[test]
    fn the_heartbeat_schema_states_the_rules() {
        let s = serde_json::to_value(<Heartbeat as utoipa::PartialSchema>::schema()).unwrap();
        assert_eq!(s["properties"]["phase"]["maxLength"], MAX_PHASE_LEN);
        let ssh = &s["properties"]["ssh"];
        let ssh = ssh.get("oneOf").map_or(ssh, |o| &o[1]);
        assert_eq!(ssh["properties"]["port"]["minimum"], 1);
        assert_eq!(
            ssh["properties"]["status"]["enum"],
            json!(["pending", "establishing", "running", "stopped"]),
            "{s}"
        );
    }

    #[test]
    fn the_server_reads_what_the_agent_sends() {
        let h = Heartbeat {
            phase: Some("p".into()),
            ssh: Some(SshReport::new("h", 22, SshStatus::Pending, Some(KEY))),
        };
        let v = serde_json::to_value(&h).unwrap();
        assert_eq!(Heartbeat::parse(Some(&v)).unwrap(), h);
        assert_eq!(Heartbeat::parse(None).unwrap(), Heartbeat::default());
    }

    #[test]
    fn bad_heartbeats_are_refused_field_by_field() {
        let status = |v: Value| Heartbeat::parse(Some(&v)).unwrap_err().status;
        assert_eq!(status(json!([])), 400);
        assert_eq!(status(json!({"phase": 1})), 422);
        assert_eq!(status(json!({"phase": "x".repeat(201)})), 422);
        let ssh = |v: Value| {
            Heartbeat::parse(Some(&json!({ "ssh": v })))
                .unwrap_err()
                .errors
                .unwrap()["ssh"][0]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert!(ssh(json!({"port": 1, "status": "running"})).starts_with("host:"));
        assert!(ssh(json!({"host": "h", "port": 0, "status": "running"})).starts_with("port:"));
        assert!(ssh(json!({"host": "h", "port": 1, "status": "up"})).starts_with("status:"));
        assert!(
            ssh(json!({"host": "h", "port": 1, "status": "running", "host_key": "x"}))
                .starts_with("host_key:")
        );
    }
}
