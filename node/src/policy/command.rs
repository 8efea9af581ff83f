//! A policy change as it is written in the Raft log: JSON text in `Command::Policy`, so the
//! log format (postcard) does not change with the policy kinds.

use serde::Deserialize;
use serde::Serialize;

use super::retention::Prune;
use super::retention::Retention;
use super::schema::Schema;
use super::search::SearchDefaults;

/// The policy command format this build writes and reads (the `v` field).
pub const COMMAND_VERSION: u32 = 1;

/// What a member reports to its leader when it applies policy commands of [`COMMAND_VERSION`].
pub const FEATURE: &str = "policy-v1";

/// What a member reports when it applies stamped upserts, `retention` policies and `prune`
/// commands, and reads snapshot format 4. The leader proposes none of them before every
/// member reported it (an upsert then goes unstamped, as older builds write it).
pub const RETENTION_FEATURE: &str = "retention-v1";

/// Longest policy name (an RFC 1123 label, like the CRD's `spec.policies[].name`).
pub const MAX_NAME_LEN: usize = 63;

/// The kinds of policy this build enforces. Internally tagged by `kind`, camelCase fields,
/// unknown fields refused: a misspelt limit must not be silently ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum PolicyBody {
    Quota(Quota),
    Schema(Schema),
    SearchDefaults(SearchDefaults),
    Retention(Retention),
}

/// A cap on the points a shard stores, checked when each upsert is applied (log order settles
/// a write racing a quota change) and before it is proposed (a fast error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quota {
    /// Most live points in the shard (or per tenant). An upsert that would go above it is
    /// refused whole; replacing existing points adds nothing and is always allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vectors: Option<u64>,
    /// Most payload bytes of live points (their payloads as stored: compact JSON) in the
    /// shard (or per tenant). An upsert that would go above it is refused whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_payload_bytes: Option<u64>,
    /// The limits hold per value of this payload field (e.g. `tenant`) instead of for the
    /// whole shard; points without the field are not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_field: Option<String>,
}

impl Quota {
    /// A shard-wide cap on points (what the operator's `maxVectors` becomes).
    pub fn max_vectors(n: u64) -> Quota {
        Quota {
            max_vectors: Some(n),
            max_payload_bytes: None,
            tenant_field: None,
        }
    }

    /// Whether checking it needs the payload usage of the shard (bytes, or per tenant).
    pub fn needs_usage(&self) -> bool {
        self.max_payload_bytes.is_some() || self.tenant_field.is_some()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.max_vectors.is_none() && self.max_payload_bytes.is_none() {
            return Err("a quota needs maxVectors and/or maxPayloadBytes".into());
        }
        if self.max_vectors == Some(0) || self.max_payload_bytes == Some(0) {
            return Err("quota maxVectors and maxPayloadBytes must be at least 1".into());
        }
        if self.tenant_field.as_deref() == Some("") {
            return Err("quota tenantField is empty".into());
        }
        Ok(())
    }
}

/// What `parse_policy` names when a policy is not valid.
const KINDS_HINT: &str = "this build enforces: quota, schema, searchDefaults, retention";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PolicyOp {
    Put,
    Delete,
    Restore,
    /// The retention sweep removing expired points (makes no version; counted in the policy's
    /// counters).
    Prune,
}

/// Who made a version: the `VectorIndex` resource (through the operator) or the Admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    Resource,
    Api,
}

/// One policy change. Stamped by the leader that proposes it (`stamp_ms`, its wall clock):
/// apply never reads a clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyCommand {
    /// [`COMMAND_VERSION`] when written by this build.
    pub v: u32,
    pub op: PolicyOp,
    pub name: String,
    /// `Put`: the new content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyBody>,
    /// `Restore`: the version whose content becomes the newest version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<u64>,
    /// `Prune`: what the sweep removes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<Prune>,
    /// Compare-and-swap: the change applies only if the policy's newest version is this one
    /// (0: the policy must not exist yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
    pub source: Source,
    pub actor: String,
    pub stamp_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Written by a newer build: this replica cannot apply it like its peers do.
    #[error(
        "policy command format {found} is newer than this build reads ({COMMAND_VERSION}); upgrade this replica"
    )]
    Newer { found: u32 },
    #[error("policy command is not valid: {0}")]
    Malformed(String),
}

impl PolicyCommand {
    /// Reads a command from the log. Any error is fatal for the replica: the leader validated
    /// the command with the same code, so only a build that differs from it fails here.
    pub fn decode(json: &str) -> Result<PolicyCommand, CommandError> {
        #[derive(Deserialize)]
        struct Head {
            v: u32,
        }
        let head: Head =
            serde_json::from_str(json).map_err(|e| CommandError::Malformed(e.to_string()))?;
        if head.v > COMMAND_VERSION {
            return Err(CommandError::Newer { found: head.v });
        }
        serde_json::from_str(json).map_err(|e| CommandError::Malformed(e.to_string()))
    }

    pub fn encode(&self) -> String {
        // A struct of strings, integers and enums always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Checks a policy name (RFC 1123 label, as the CRD requires).
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "policy name {name:?} is not valid: use 1-{MAX_NAME_LEN} lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

/// Parses and checks a policy given by a user (Admin API, CLI, operator), naming what is wrong.
pub fn parse_policy(json: &str) -> Result<PolicyBody, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("policy is not valid JSON: {e}"))?;
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .ok_or_else(|| format!("policy needs a \"kind\" ({KINDS_HINT})"))?;
    if !["quota", "schema", "searchDefaults", "retention"].contains(&kind) {
        return Err(format!(
            "policy kind {kind:?} is not known ({KINDS_HINT}); see docs/policies.md"
        ));
    }
    let body: PolicyBody = serde_json::from_value(value)
        .map_err(|e| format!("policy is not valid: {e} ({KINDS_HINT}; see docs/policies.md)"))?;
    match &body {
        PolicyBody::Quota(q) => q.validate(),
        PolicyBody::Schema(s) => s.validate(),
        PolicyBody::SearchDefaults(d) => d.validate(),
        PolicyBody::Retention(r) => r.validate(),
    }?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_names_what_is_wrong() {
        assert!(parse_policy(r#"{"kind":"quota","maxVectors":250}"#).is_ok());
        let e = parse_policy(r#"{"kind":"quota","maxVector":250}"#).unwrap_err();
        assert!(e.contains("maxVector"), "{e}");
        assert!(parse_policy(r#"{"kind":"retention","maxAgeSeconds":60}"#).is_ok());
        let e = parse_policy(r#"{"kind":"retention"}"#).unwrap_err();
        assert!(e.contains("maxAgeSeconds and/or maxVectors"), "{e}");
        let e = parse_policy(r#"{"kind":"ttl","maxAgeSeconds":60}"#).unwrap_err();
        assert!(e.contains("not known"), "{e}");
        let e = parse_policy(r#"{"kind":"schema","fields":{}}"#).unwrap_err();
        assert!(e.contains("fields and/or maxPayloadBytes"), "{e}");
        let e = parse_policy(r#"{"kind":"searchDefaults","maxk":3}"#).unwrap_err();
        assert!(e.contains("maxk"), "{e}");
        assert!(
            parse_policy(r#"{"kind":"searchDefaults","maxK":100,"requireMatch":["tenant"]}"#)
                .is_ok()
        );
        assert!(
            parse_policy(
                r#"{"kind":"schema","fields":{"tenant":{"type":"string","required":true}}}"#
            )
            .is_ok()
        );
        let e = parse_policy(r#"{"kind":"quota","maxVectors":0}"#).unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
        let e = parse_policy(r#"{"kind":"quota","tenantField":"t"}"#).unwrap_err();
        assert!(e.contains("maxVectors and/or maxPayloadBytes"), "{e}");
        assert!(parse_policy(r#"{"kind":"quota","maxPayloadBytes":10,"tenantField":"t"}"#).is_ok());
        assert!(
            parse_policy(r#"{"maxVectors":1}"#)
                .unwrap_err()
                .contains("kind")
        );
        assert!(parse_policy("[").is_err());
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(validate_name("per-shard-cap2").is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_newer_command_format_is_not_applied() {
        let cmd = PolicyCommand {
            v: COMMAND_VERSION,
            op: PolicyOp::Put,
            name: "q".into(),
            policy: Some(PolicyBody::Quota(Quota::max_vectors(3))),
            restore: None,
            prune: None,
            expected_version: None,
            source: Source::Api,
            actor: "t".into(),
            stamp_ms: 5,
        };
        assert_eq!(PolicyCommand::decode(&cmd.encode()), Ok(cmd.clone()));
        let newer = cmd.encode().replace("\"v\":1", "\"v\":2");
        assert_eq!(
            PolicyCommand::decode(&newer),
            Err(CommandError::Newer { found: 2 })
        );
        // Same format, a kind this build does not know: a build older than the leader.
        let unknown = cmd.encode().replace("\"quota\"", "\"ttl\"");
        assert!(matches!(
            PolicyCommand::decode(&unknown),
            Err(CommandError::Malformed(_))
        ));
    }
}
