//! Validation in Rust of everything the CRD schema enforces, plus cross-field checks.
//!
//! The API server already rejects bad objects, but the operator may meet objects that
//! slipped past (an older CRD, a schema-less test server) and must report them in status
//! instead of crash-looping. Keep these checks in step with the schema attributes in
//! `spec.rs`; the unit tests below pin both.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::spec::{
    FilterCondition, MAX_FIELD_NAME, MAX_FILTER_CONDITIONS, MAX_POLICIES, MAX_REQUIRE_MATCH,
    MAX_SCHEMA_FIELDS, PolicyFilter, PolicyKind, PolicySpec, STRUCTURAL_FIELDS, VectorIndexSpec,
};

/// Why a spec is invalid. `field` is the YAML path below `spec`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("spec.{field} = {value} is out of range {min}..={max}")]
    OutOfRange {
        field: String,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("spec.{field} = {value:?} is invalid: {reason}")]
    InvalidValue {
        field: String,
        value: String,
        reason: &'static str,
    },
    #[error("spec.policies has {count} entries; at most {max} are allowed")]
    TooManyPolicies { count: usize, max: usize },
    #[error("spec.policies: name {name:?} is used more than once")]
    DuplicatePolicy { name: String },
    #[error("spec.policies[{name}]: {reason}")]
    InvalidPolicy { name: String, reason: &'static str },
    /// `field` is the path below the policy, e.g. `filter.must[0].match`.
    #[error("spec.policies[{name}].{field}: {reason}")]
    InvalidPolicyField {
        name: String,
        field: String,
        reason: String,
    },
    #[error(
        "spec.{field} is immutable (structural field): {old} -> {new}; create a new VectorIndex to change it"
    )]
    Immutable {
        field: &'static str,
        old: String,
        new: String,
    },
    #[error(
        "spec.{field} is set when the index is created: {old} -> {new}; create a new VectorIndex to change it"
    )]
    SetAtCreation {
        field: &'static str,
        old: String,
        new: String,
    },
}

/// Legal but questionable settings; the operator may surface them as Events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecWarning {
    #[error(
        "spec.replicas = {0} is even: a Raft group of {0} tolerates no more failures than one of {n}",
        n = .0 - 1
    )]
    EvenReplicas(u32),
    #[error(
        "spec.replicas = 1: a shard has no redundancy and is unavailable while its pod restarts"
    )]
    SingleReplica,
    #[error(
        "spec.hnsw.efConstruction = {ef_construction} is below hnsw.m = {m}: graph quality suffers"
    )]
    EfConstructionBelowM { ef_construction: u32, m: u32 },
}

/// Check a spec; returns every problem found, not just the first.
pub fn validate(spec: &VectorIndexSpec) -> Result<(), Vec<SpecError>> {
    let mut errors = Vec::new();
    let mut range = |field: &str, value: u64, min: u64, max: u64| {
        if !(min..=max).contains(&value) {
            errors.push(SpecError::OutOfRange {
                field: field.to_owned(),
                value,
                min,
                max,
            });
        }
    };
    range("dimension", spec.dimension.into(), 1, 4096);
    range("shards", spec.shards.into(), 1, 64);
    range("replicas", spec.replicas.into(), 1, 7);
    range("hnsw.m", spec.hnsw.m.into(), 4, 128);
    range(
        "hnsw.efConstruction",
        spec.hnsw.ef_construction.into(),
        8,
        2048,
    );
    range("hnsw.efSearch", spec.hnsw.ef_search.into(), 1, 4096);
    range("indexing.threads", spec.indexing.threads.into(), 0, 256);
    range(
        "indexing.batchSize",
        spec.indexing.batch_size.into(),
        1,
        65536,
    );
    range(
        "indexing.queueCapacity",
        spec.indexing.queue_capacity.into(),
        1,
        u32::MAX.into(),
    );
    range(
        "snapshots.logEntries",
        spec.snapshots.log_entries,
        1,
        u64::MAX,
    );
    range("snapshots.keep", spec.snapshots.keep.into(), 1, 100);

    let mut invalid = |field: &str, value: &str, reason: &'static str| {
        errors.push(SpecError::InvalidValue {
            field: field.to_owned(),
            value: value.to_owned(),
            reason,
        });
    };
    match parse_duration(&spec.snapshots.interval) {
        Ok(d) if d < Duration::from_secs(1) => {
            invalid(
                "snapshots.interval",
                &spec.snapshots.interval,
                "must be at least 1s",
            );
        }
        Ok(_) => {}
        Err(reason) => invalid("snapshots.interval", &spec.snapshots.interval, reason),
    }
    if let Err(reason) = check_storage_size(&spec.storage.size.0) {
        invalid("storage.size", &spec.storage.size.0, reason);
    }
    if let Some(class) = &spec.storage.storage_class_name
        && !is_dns_subdomain(class)
    {
        invalid(
            "storage.storageClassName",
            class,
            "must be a DNS subdomain (lowercase alphanumerics, '-' and '.', at most 253 characters)",
        );
    }
    if let Some(r) = spec
        .auth
        .as_ref()
        .and_then(|a| a.api_key_secret_ref.as_ref())
    {
        if !is_dns_subdomain(&r.name) {
            invalid(
                "auth.apiKeySecretRef.name",
                &r.name,
                "must be a Secret name (a DNS subdomain)",
            );
        }
        let keys = [
            ("auth.apiKeySecretRef.readWriteKey", Some(&r.read_write_key)),
            ("auth.apiKeySecretRef.readOnlyKey", r.read_only_key.as_ref()),
        ];
        for (field, key) in keys {
            if let Some(k) = key
                && !is_secret_key(k)
            {
                invalid(
                    field,
                    k,
                    "must be a Secret key (alphanumerics, '-', '_' and '.', at most 253 characters)",
                );
            }
        }
        if r.read_only_key.as_ref() == Some(&r.read_write_key) {
            invalid(
                "auth.apiKeySecretRef.readOnlyKey",
                &r.read_write_key,
                "must differ from readWriteKey",
            );
        }
    }
    if let Some(image) = &spec.image
        && (image.is_empty() || image.len() > 512 || image.chars().any(char::is_whitespace))
    {
        invalid(
            "image",
            image,
            "must be 1..=512 characters without whitespace",
        );
    }

    validate_policies(spec, &mut errors);

    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn validate_policies(spec: &VectorIndexSpec, errors: &mut Vec<SpecError>) {
    if spec.policies.len() > MAX_POLICIES {
        errors.push(SpecError::TooManyPolicies {
            count: spec.policies.len(),
            max: MAX_POLICIES,
        });
    }
    let mut seen = BTreeSet::new();
    for p in &spec.policies {
        validate_policy(p, errors);
        if !seen.insert(p.name.as_str()) {
            errors.push(SpecError::DuplicatePolicy {
                name: p.name.clone(),
            });
        }
    }
}

/// One policy: the same rules as the CRD's CEL rules and schema, and what the schema cannot
/// say (filter `match` values), with the field named.
fn validate_policy(p: &PolicySpec, errors: &mut Vec<SpecError>) {
    let mut bad = |reason| {
        errors.push(SpecError::InvalidPolicy {
            name: p.name.clone(),
            reason,
        });
    };
    if !is_dns_label(&p.name) {
        bad("name must be a DNS label (lowercase alphanumerics and '-', at most 63 characters)");
    }
    let limits = [
        p.max_age_seconds,
        p.max_vectors,
        p.max_payload_bytes,
        p.max_k.map(u64::from),
        p.max_ef_search.map(u64::from),
    ];
    if limits.contains(&Some(0)) {
        bad("limits must be at least 1");
    }
    let kind = p.kind;
    let search_fields = p.max_k.is_some()
        || p.max_ef_search.is_some()
        || p.filter.is_some()
        || !p.require_match.is_empty();
    match kind {
        PolicyKind::Retention if p.max_age_seconds.is_none() && p.max_vectors.is_none() => {
            bad("a retention policy needs maxAgeSeconds and/or maxVectors");
        }
        PolicyKind::Quota if p.max_vectors.is_none() && p.max_payload_bytes.is_none() => {
            bad("a quota policy needs maxVectors and/or maxPayloadBytes");
        }
        PolicyKind::Schema if p.fields.is_empty() && p.max_payload_bytes.is_none() => {
            bad("a schema policy needs fields and/or maxPayloadBytes");
        }
        PolicyKind::SearchDefaults if !search_fields => {
            bad("a searchDefaults policy needs maxK, maxEfSearch, filter and/or requireMatch");
        }
        _ => {}
    }
    if kind != PolicyKind::Retention && p.max_age_seconds.is_some() {
        bad("maxAgeSeconds applies to retention policies only");
    }
    if !matches!(kind, PolicyKind::Quota | PolicyKind::Retention) && p.max_vectors.is_some() {
        bad("maxVectors applies to quota and retention policies only");
    }
    if !matches!(kind, PolicyKind::Quota | PolicyKind::Schema) && p.max_payload_bytes.is_some() {
        bad("maxPayloadBytes applies to quota and schema policies only");
    }
    if kind != PolicyKind::Schema && !p.fields.is_empty() {
        bad("fields applies to schema policies only");
    }
    if kind != PolicyKind::SearchDefaults && search_fields {
        bad("maxK, maxEfSearch, filter and requireMatch apply to searchDefaults policies only");
    }
    if kind != PolicyKind::Retention && p.timestamp_field.is_some() {
        bad("timestampField applies to retention policies only");
    }
    if kind != PolicyKind::Quota && p.tenant_field.is_some() {
        bad("tenantField applies to quota policies only");
    }

    let mut field = |field: String, reason: String| {
        errors.push(SpecError::InvalidPolicyField {
            name: p.name.clone(),
            field,
            reason,
        });
    };
    // The nodes refuse both (retention.rs, command.rs); caught here so the operator reports
    // InvalidSpec naming the field instead of a refused sync.
    if p.timestamp_field.is_some() && p.max_age_seconds.is_none() {
        field(
            "timestampField".into(),
            "needs maxAgeSeconds (the age it measures)".into(),
        );
    }
    for (name, value) in [
        ("timestampField", &p.timestamp_field),
        ("tenantField", &p.tenant_field),
    ] {
        if value
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > MAX_FIELD_NAME)
        {
            field(
                name.into(),
                format!("a payload field name has 1 to {MAX_FIELD_NAME} characters"),
            );
        }
    }
    if p.fields.len() > MAX_SCHEMA_FIELDS {
        field(
            "fields".into(),
            format!(
                "lists {} fields; at most {MAX_SCHEMA_FIELDS}",
                p.fields.len()
            ),
        );
    }
    for name in p.fields.keys() {
        if name.is_empty() || name.len() > MAX_FIELD_NAME {
            field(
                format!("fields[{name:?}]"),
                format!("a payload field name has 1 to {MAX_FIELD_NAME} characters"),
            );
        }
    }
    if p.require_match.len() > MAX_REQUIRE_MATCH {
        field(
            "requireMatch".into(),
            format!(
                "lists {} fields; at most {MAX_REQUIRE_MATCH}",
                p.require_match.len()
            ),
        );
    }
    for (i, name) in p.require_match.iter().enumerate() {
        if name.is_empty() || name.len() > MAX_FIELD_NAME {
            field(
                format!("requireMatch[{i}]"),
                format!("a payload field name has 1 to {MAX_FIELD_NAME} characters"),
            );
        }
    }
    if let Some(f) = &p.filter {
        for (path, reason) in filter_problems(f) {
            field(path, reason);
        }
    }
}

/// What is wrong with a `searchDefaults` filter, as (path below the policy, reason).
fn filter_problems(f: &PolicyFilter) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if f.must.is_empty() && f.must_not.is_empty() {
        out.push((
            "filter".into(),
            "needs must and/or mustNot conditions".into(),
        ));
    }
    let total = f.must.len() + f.must_not.len();
    if total > MAX_FILTER_CONDITIONS {
        out.push((
            "filter".into(),
            format!("has {total} conditions; at most {MAX_FILTER_CONDITIONS} (must and mustNot together)"),
        ));
    }
    for (clause, list) in [("must", &f.must), ("mustNot", &f.must_not)] {
        for (i, c) in list.iter().enumerate() {
            let at = format!("filter.{clause}[{i}]");
            out.extend(condition_problem(c).map(|(sub, reason)| (format!("{at}{sub}"), reason)));
        }
    }
    out
}

fn condition_problem(c: &FilterCondition) -> Option<(&'static str, String)> {
    if c.field.is_empty() || c.field.len() > MAX_FIELD_NAME {
        return Some((
            ".field",
            format!("a payload field name has 1 to {MAX_FIELD_NAME} characters"),
        ));
    }
    match (&c.match_, &c.range) {
        (Some(_), Some(_)) | (None, None) => {
            Some(("", "needs exactly one of match and range".into()))
        }
        (Some(v), None) => {
            let ok = v.is_string() || v.is_boolean() || v.is_i64();
            (!ok).then(|| {
                (
                    ".match",
                    format!(
                        "{v} is not a string, an integer (64-bit) or a boolean; use a range for other numbers"
                    ),
                )
            })
        }
        (None, Some(r)) => {
            let bounds = [r.gt, r.gte, r.lt, r.lte];
            if bounds.iter().all(Option::is_none) {
                Some((".range", "needs at least one of gt, gte, lt, lte".into()))
            } else if bounds.iter().flatten().any(|b| !b.is_finite()) {
                Some((".range", "bounds must be finite numbers".into()))
            } else {
                None
            }
        }
    }
}

/// Check an update: the structural fields must not change (mirrors the CEL rules).
pub fn validate_update(old: &VectorIndexSpec, new: &VectorIndexSpec) -> Result<(), Vec<SpecError>> {
    let diffs = old.structural().diff(&new.structural());
    let mut errors: Vec<SpecError> = STRUCTURAL_FIELDS
        .iter()
        .filter_map(|(name, path)| {
            let d = diffs.iter().find(|d| d.field == *name)?;
            Some(SpecError::Immutable {
                field: path,
                old: d.data.clone(),
                new: d.configured.clone(),
            })
        })
        .collect();
    // Not structural (the data on disk does not depend on it), but pods with and without
    // peer mTLS cannot talk to each other.
    let (was, is) = (
        crate::PeerTlsSpec::enabled(old.peer_tls.as_ref()),
        crate::PeerTlsSpec::enabled(new.peer_tls.as_ref()),
    );
    if was != is {
        errors.push(SpecError::SetAtCreation {
            field: "peerTls.enabled",
            old: was.to_string(),
            new: is.to_string(),
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Legal settings worth a warning.
pub fn warnings(spec: &VectorIndexSpec) -> Vec<SpecWarning> {
    let mut w = Vec::new();
    if spec.replicas == 1 {
        w.push(SpecWarning::SingleReplica);
    } else if spec.replicas.is_multiple_of(2) {
        w.push(SpecWarning::EvenReplicas(spec.replicas));
    }
    if spec.hnsw.ef_construction < spec.hnsw.m {
        w.push(SpecWarning::EfConstructionBelowM {
            ef_construction: spec.hnsw.ef_construction,
            m: spec.hnsw.m,
        });
    }
    w
}

/// Parse a duration such as `500ms`, `90s`, `5m` or `1h30m` (the schema's
/// [`DURATION_PATTERN`](crate::spec::DURATION_PATTERN)).
pub fn parse_duration(s: &str) -> Result<Duration, &'static str> {
    const SHAPE: &str = "expected <number><unit> parts with units ms, s, m or h, e.g. 5m or 1h30m";
    if s.is_empty() || s.len() > 32 {
        return Err(SHAPE);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or(SHAPE)?;
        if digits == 0 {
            return Err(SHAPE);
        }
        let n: u64 = rest[..digits].parse().map_err(|_| "number too large")?;
        rest = &rest[digits..];
        // "ms" before "m", or "5ms" would read as 5 minutes followed by garbage.
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return Err(SHAPE);
        };
        rest = &rest[len..];
        let part = n.checked_mul(unit_ms).ok_or("duration too large")?;
        total = total
            .checked_add(Duration::from_millis(part))
            .ok_or("duration too large")?;
    }
    Ok(total)
}

/// Check a volume size (the schema's
/// [`STORAGE_SIZE_PATTERN`](crate::spec::STORAGE_SIZE_PATTERN)) and that it is not zero.
fn check_storage_size(s: &str) -> Result<(), &'static str> {
    const SHAPE: &str = "expected a positive quantity such as 10Gi, 500Mi or 1T";
    const SUFFIXES: [&str; 12] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E",
    ];
    let number_end = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (number, None),
    };
    let digits_ok = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if s.len() > 32
        || !digits_ok(int)
        || frac.is_some_and(|f| !digits_ok(f))
        || !(suffix.is_empty() || SUFFIXES.contains(&suffix))
    {
        return Err(SHAPE);
    }
    if number.bytes().all(|b| b == b'0' || b == b'.') {
        return Err("must be greater than zero");
    }
    Ok(())
}

fn is_dns_label(s: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(ok_char)
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `SECRET_KEY_PATTERN`, at most 253 characters.
fn is_secret_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{
        FilterCondition, FilterRange, Metric, PolicyFilter, PolicySpec, SchemaFieldSpec,
        SchemaFieldType,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn good() -> VectorIndexSpec {
        VectorIndexSpec::new(384, Metric::Cosine)
    }

    fn auth(name: &str, rw: &str, ro: Option<&str>) -> crate::spec::AuthSpec {
        crate::spec::AuthSpec {
            api_key_secret_ref: Some(crate::spec::ApiKeySecretRef {
                name: name.into(),
                read_write_key: rw.into(),
                read_only_key: ro.map(Into::into),
            }),
        }
    }

    #[test]
    fn auth_with_a_secret_is_valid() {
        let mut s = good();
        s.auth = Some(auth("kindex-keys", "readWrite", Some("read-only.txt")));
        assert_eq!(validate(&s), Ok(()));
    }

    fn policy(name: &str, kind: PolicyKind) -> PolicySpec {
        PolicySpec {
            max_vectors: Some(1000),
            ..PolicySpec::new(name, kind)
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(validate(&good()), Ok(()));
    }

    /// Each row breaks one thing; `validate` must reject it and name the field.
    #[test]
    fn bad_specs_are_rejected() {
        type Edit = fn(&mut VectorIndexSpec);
        let table: &[(&str, Edit)] = &[
            ("dimension", |s| s.dimension = 0),
            ("dimension", |s| s.dimension = 4097),
            ("shards", |s| s.shards = 0),
            ("shards", |s| s.shards = 65),
            ("replicas", |s| s.replicas = 0),
            ("replicas", |s| s.replicas = 8),
            ("hnsw.m", |s| s.hnsw.m = 3),
            ("hnsw.m", |s| s.hnsw.m = 129),
            ("hnsw.efConstruction", |s| s.hnsw.ef_construction = 7),
            ("hnsw.efConstruction", |s| s.hnsw.ef_construction = 2049),
            ("hnsw.efSearch", |s| s.hnsw.ef_search = 0),
            ("hnsw.efSearch", |s| s.hnsw.ef_search = 4097),
            ("indexing.threads", |s| s.indexing.threads = 257),
            ("indexing.batchSize", |s| s.indexing.batch_size = 0),
            ("indexing.batchSize", |s| s.indexing.batch_size = 65537),
            ("indexing.queueCapacity", |s| s.indexing.queue_capacity = 0),
            ("snapshots.logEntries", |s| s.snapshots.log_entries = 0),
            ("snapshots.keep", |s| s.snapshots.keep = 0),
            ("snapshots.keep", |s| s.snapshots.keep = 101),
            ("snapshots.interval", |s| s.snapshots.interval = "".into()),
            ("snapshots.interval", |s| s.snapshots.interval = "5".into()),
            ("snapshots.interval", |s| {
                s.snapshots.interval = "5 m".into()
            }),
            ("snapshots.interval", |s| s.snapshots.interval = "1d".into()),
            ("snapshots.interval", |s| {
                s.snapshots.interval = "-5m".into()
            }),
            ("snapshots.interval", |s| {
                s.snapshots.interval = "500ms".into()
            }),
            ("snapshots.interval", |s| s.snapshots.interval = "0s".into()),
            ("storage.size", |s| s.storage.size = Quantity("".into())),
            ("storage.size", |s| s.storage.size = Quantity("ten".into())),
            ("storage.size", |s| s.storage.size = Quantity("10GB".into())),
            ("storage.size", |s| s.storage.size = Quantity("-1Gi".into())),
            ("storage.size", |s| s.storage.size = Quantity("0Gi".into())),
            ("storage.size", |s| s.storage.size = Quantity("1.Gi".into())),
            ("storage.storageClassName", |s| {
                s.storage.storage_class_name = Some("Fast_SSD".into())
            }),
            ("storage.storageClassName", |s| {
                s.storage.storage_class_name = Some("".into())
            }),
            ("auth.apiKeySecretRef.name", |s| {
                s.auth = Some(auth("Keys", "readWrite", None))
            }),
            ("auth.apiKeySecretRef.readWriteKey", |s| {
                s.auth = Some(auth("keys", "read write", None))
            }),
            ("auth.apiKeySecretRef.readOnlyKey", |s| {
                s.auth = Some(auth("keys", "readWrite", Some("a/b")))
            }),
            ("auth.apiKeySecretRef.readOnlyKey", |s| {
                s.auth = Some(auth("keys", "readWrite", Some("readWrite")))
            }),
            ("image", |s| s.image = Some("".into())),
            ("image", |s| s.image = Some("kindex node:1".into())),
        ];
        for (field, edit) in table {
            let mut spec = good();
            edit(&mut spec);
            let errors =
                validate(&spec).expect_err(&format!("{field}: {spec:?} should be rejected"));
            let text = errors[0].to_string();
            assert!(
                text.starts_with(&format!("spec.{field} ")),
                "{field}: unexpected error {text}"
            );
        }
    }

    #[test]
    fn bad_policies_are_rejected() {
        type Edit = fn(&mut Vec<PolicySpec>);
        let table: &[(&str, Edit)] = &[
            ("needs maxAgeSeconds", |p| {
                p.push(PolicySpec {
                    max_vectors: None,
                    ..policy("keep", PolicyKind::Retention)
                })
            }),
            ("quota and schema policies only", |p| {
                p.push(PolicySpec {
                    max_payload_bytes: Some(10),
                    ..policy("keep", PolicyKind::Retention)
                })
            }),
            ("needs maxVectors", |p| {
                p.push(PolicySpec {
                    max_vectors: None,
                    ..policy("cap", PolicyKind::Quota)
                })
            }),
            ("retention policies only", |p| {
                p.push(PolicySpec {
                    max_age_seconds: Some(60),
                    ..policy("cap", PolicyKind::Quota)
                })
            }),
            ("at least 1", |p| {
                p.push(PolicySpec {
                    max_vectors: Some(0),
                    ..policy("cap", PolicyKind::Quota)
                })
            }),
            ("DNS label", |p| {
                p.push(policy("Bad_Name", PolicyKind::Quota))
            }),
            ("more than once", |p| {
                p.push(policy("cap", PolicyKind::Quota));
                p.push(policy("cap", PolicyKind::Retention));
            }),
            ("at most 32", |p| {
                for i in 0..33 {
                    p.push(policy(&format!("p{i}"), PolicyKind::Quota));
                }
            }),
        ];
        for (needle, edit) in table {
            let mut spec = good();
            edit(&mut spec.policies);
            let errors = validate(&spec).expect_err(needle);
            assert!(
                errors.iter().any(|e| e.to_string().contains(needle)),
                "{needle}: got {errors:?}"
            );
        }
    }

    fn schema_policy() -> PolicySpec {
        let mut p = PolicySpec::new("shape", PolicyKind::Schema);
        p.fields.insert(
            "tenant".into(),
            SchemaFieldSpec {
                type_: SchemaFieldType::String,
                required: true,
            },
        );
        p
    }

    fn condition(field: &str, m: serde_json::Value) -> FilterCondition {
        FilterCondition {
            field: field.into(),
            match_: Some(m),
            range: None,
        }
    }

    fn search_policy() -> PolicySpec {
        PolicySpec {
            max_k: Some(100),
            filter: Some(PolicyFilter {
                must: vec![],
                must_not: vec![condition("hidden", true.into())],
            }),
            require_match: vec!["tenant".into()],
            ..PolicySpec::new("search", PolicyKind::SearchDefaults)
        }
    }

    #[test]
    fn schema_and_search_defaults_policies_are_checked_naming_the_field() {
        let mut spec = good();
        spec.policies = vec![schema_policy(), search_policy()];
        assert_eq!(validate(&spec), Ok(()));

        type Edit = fn(&mut PolicySpec);
        // (policy to edit: 0 schema / 1 searchDefaults, edit, the start of the error)
        let table: &[(usize, Edit, &str)] = &[
            (
                0,
                |p| p.fields.clear(),
                "spec.policies[shape]: a schema policy needs fields and/or maxPayloadBytes",
            ),
            (
                0,
                |p| p.max_vectors = Some(5),
                "spec.policies[shape]: maxVectors applies to quota and retention",
            ),
            (
                0,
                |p| p.max_k = Some(5),
                "spec.policies[shape]: maxK, maxEfSearch, filter and requireMatch apply to searchDefaults",
            ),
            (
                0,
                |p| p.max_payload_bytes = Some(0),
                "spec.policies[shape]: limits must be at least 1",
            ),
            (
                0,
                |p| {
                    p.fields.insert(
                        String::new(),
                        SchemaFieldSpec {
                            type_: SchemaFieldType::Integer,
                            required: false,
                        },
                    );
                },
                "spec.policies[shape].fields[\"\"]: a payload field name",
            ),
            (
                0,
                |p| {
                    for i in 0..65 {
                        p.fields.insert(
                            format!("f{i}"),
                            SchemaFieldSpec {
                                type_: SchemaFieldType::Number,
                                required: false,
                            },
                        );
                    }
                },
                "spec.policies[shape].fields: lists 66 fields; at most 64",
            ),
            (
                1,
                |p| *p = PolicySpec::new("search", PolicyKind::SearchDefaults),
                "spec.policies[search]: a searchDefaults policy needs maxK",
            ),
            (
                1,
                |p| p.max_ef_search = Some(0),
                "spec.policies[search]: limits must be at least 1",
            ),
            (
                1,
                |p| p.max_payload_bytes = Some(10),
                "spec.policies[search]: maxPayloadBytes applies to quota and schema",
            ),
            (
                1,
                |p| p.require_match.push(String::new()),
                "spec.policies[search].requireMatch[1]: a payload field name",
            ),
            (
                1,
                |p| p.filter = Some(PolicyFilter::default()),
                "spec.policies[search].filter: needs must and/or mustNot",
            ),
            (
                1,
                |p| {
                    p.filter.as_mut().unwrap().must = vec![condition("a", 1.into()); 16];
                },
                "spec.policies[search].filter: has 17 conditions; at most 16",
            ),
            (
                1,
                |p| {
                    p.filter.as_mut().unwrap().must = vec![condition("tenant", 1.5.into())];
                },
                "spec.policies[search].filter.must[0].match: 1.5 is not a string, an integer",
            ),
            (
                1,
                |p| {
                    p.filter.as_mut().unwrap().must_not[0].match_ =
                        Some(serde_json::json!({"a": 1}));
                },
                "spec.policies[search].filter.mustNot[0].match: {\"a\":1} is not",
            ),
            (
                1,
                |p| {
                    p.filter.as_mut().unwrap().must_not[0].field.clear();
                },
                "spec.policies[search].filter.mustNot[0].field: a payload field name",
            ),
            (
                1,
                |p| {
                    p.filter.as_mut().unwrap().must_not[0].range = Some(FilterRange {
                        gt: Some(1.0),
                        ..FilterRange::default()
                    });
                },
                "spec.policies[search].filter.mustNot[0]: needs exactly one of match and range",
            ),
            (
                1,
                |p| {
                    let c = &mut p.filter.as_mut().unwrap().must_not[0];
                    c.match_ = None;
                    c.range = Some(FilterRange::default());
                },
                "spec.policies[search].filter.mustNot[0].range: needs at least one of gt",
            ),
        ];
        for (i, (which, edit, expected)) in table.iter().enumerate() {
            let mut spec = good();
            spec.policies = vec![schema_policy(), search_policy()];
            edit(&mut spec.policies[*which]);
            let errors = validate(&spec).expect_err(expected);
            assert!(
                errors.iter().any(|e| e.to_string().starts_with(expected)),
                "case {i}: expected {expected:?}, got {:?}",
                errors.iter().map(ToString::to_string).collect::<Vec<_>>()
            );
        }
        // A range and integer, string and boolean matches are fine.
        let mut spec = good();
        let mut p = search_policy();
        let f = p.filter.as_mut().unwrap();
        f.must = vec![
            condition("n", (-3).into()),
            condition("s", "x".into()),
            FilterCondition {
                field: "year".into(),
                match_: None,
                range: Some(FilterRange {
                    gte: Some(2020.0),
                    ..FilterRange::default()
                }),
            },
        ];
        spec.policies = vec![p];
        assert_eq!(validate(&spec), Ok(()));
    }

    /// `events`: retention by a payload timestamp; `per-tenant`: a quota per tenant.
    fn timestamp_and_tenant_policies() -> Vec<PolicySpec> {
        vec![
            PolicySpec {
                max_age_seconds: Some(86_400),
                timestamp_field: Some("created".into()),
                ..PolicySpec::new("events", PolicyKind::Retention)
            },
            PolicySpec {
                max_vectors: Some(10_000),
                tenant_field: Some("tenant".into()),
                ..PolicySpec::new("per-tenant", PolicyKind::Quota)
            },
        ]
    }

    /// The node's rules for `timestampField` and `tenantField` (retention.rs, command.rs),
    /// each refusal naming the policy and the field.
    #[test]
    fn timestamp_and_tenant_fields_are_checked_naming_the_field() {
        let mut spec = good();
        spec.policies = timestamp_and_tenant_policies();
        assert_eq!(validate(&spec), Ok(()));

        type Edit = fn(&mut PolicySpec);
        // (policy to edit: 0 retention / 1 quota, edit, the start of the error)
        let table: &[(usize, Edit, &str)] = &[
            (
                0,
                |p| {
                    p.max_age_seconds = None;
                    p.max_vectors = Some(5);
                },
                "spec.policies[events].timestampField: needs maxAgeSeconds",
            ),
            (
                0,
                |p| p.timestamp_field = Some(String::new()),
                "spec.policies[events].timestampField: a payload field name has 1 to 256",
            ),
            (
                0,
                |p| p.timestamp_field = Some("t".repeat(MAX_FIELD_NAME + 1)),
                "spec.policies[events].timestampField: a payload field name has 1 to 256",
            ),
            (
                0,
                |p| p.tenant_field = Some("tenant".into()),
                "spec.policies[events]: tenantField applies to quota policies only",
            ),
            (
                1,
                |p| p.tenant_field = Some(String::new()),
                "spec.policies[per-tenant].tenantField: a payload field name has 1 to 256",
            ),
            (
                1,
                |p| p.timestamp_field = Some("created".into()),
                "spec.policies[per-tenant]: timestampField applies to retention policies only",
            ),
            (
                1,
                |p| p.max_vectors = None,
                "spec.policies[per-tenant]: a quota policy needs maxVectors and/or maxPayloadBytes",
            ),
            (
                1,
                |p| {
                    *p = PolicySpec {
                        tenant_field: Some("tenant".into()),
                        ..schema_policy()
                    }
                },
                "spec.policies[shape]: tenantField applies to quota policies only",
            ),
        ];
        for (i, (which, edit, expected)) in table.iter().enumerate() {
            let mut spec = good();
            spec.policies = timestamp_and_tenant_policies();
            edit(&mut spec.policies[*which]);
            let errors = validate(&spec).expect_err(expected);
            assert!(
                errors.iter().any(|e| e.to_string().starts_with(expected)),
                "case {i}: expected {expected:?}, got {:?}",
                errors.iter().map(ToString::to_string).collect::<Vec<_>>()
            );
        }
        // A per-tenant payload cap alone, and an age with a count, are fine.
        let mut spec = good();
        spec.policies = timestamp_and_tenant_policies();
        spec.policies[0].max_vectors = Some(5);
        spec.policies[1].max_vectors = None;
        spec.policies[1].max_payload_bytes = Some(1 << 20);
        assert_eq!(validate(&spec), Ok(()));
    }

    #[test]
    fn all_errors_are_reported() {
        let mut spec = good();
        spec.dimension = 0;
        spec.shards = 100;
        spec.hnsw.m = 1;
        assert_eq!(validate(&spec).unwrap_err().len(), 3);
    }

    #[test]
    fn edge_values_are_accepted() {
        let mut spec = good();
        spec.dimension = 4096;
        spec.shards = 64;
        spec.replicas = 7;
        spec.hnsw.m = 128;
        spec.hnsw.ef_construction = 8;
        spec.indexing.threads = 256;
        spec.indexing.batch_size = 65536;
        spec.snapshots.interval = "1h30m15s".into();
        spec.snapshots.keep = 100;
        spec.storage.size = Quantity("1.5Ti".into());
        spec.storage.storage_class_name = Some("fast.ssd-1".into());
        spec.policies = vec![policy("cap", PolicyKind::Quota)];
        assert_eq!(validate(&spec), Ok(()));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m5s"), Ok(Duration::from_secs(125)));
        for bad in ["", "m", "5", "5x", "5m3", "1.5h", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn updates_of_structural_fields_are_rejected() {
        let old = good();
        let mut new = old.clone();
        new.replicas = 5;
        new.hnsw.ef_search = 128;
        assert_eq!(validate_update(&old, &new), Ok(()));

        new.dimension = 768;
        new.metric = Metric::L2;
        new.shards = 2;
        new.quantization = crate::Quantization::Int8;
        new.hnsw.m = 32;
        new.hnsw.ef_construction = 400;
        let errors = validate_update(&old, &new).unwrap_err();
        let fields: Vec<_> = errors
            .iter()
            .map(|e| match e {
                SpecError::Immutable { field, .. } => *field,
                other => panic!("unexpected {other}"),
            })
            .collect();
        assert_eq!(
            fields,
            [
                "dimension",
                "metric",
                "shards",
                "quantization",
                "hnsw.m",
                "hnsw.efConstruction"
            ]
        );
        assert_eq!(
            errors[0].to_string(),
            "spec.dimension is immutable (structural field): 384 -> 768; create a new VectorIndex to change it"
        );
        assert_eq!(
            errors[3].to_string(),
            "spec.quantization is immutable (structural field): none -> int8; create a new VectorIndex to change it"
        );
    }

    #[test]
    fn peer_tls_cannot_be_switched_on_a_running_index() {
        let old = good();
        let mut new = old.clone();
        // Unset and explicitly off are the same.
        new.peer_tls = Some(crate::PeerTlsSpec { enabled: false });
        assert_eq!(validate_update(&old, &new), Ok(()));
        new.peer_tls = Some(crate::PeerTlsSpec { enabled: true });
        let errors = validate_update(&old, &new).unwrap_err();
        assert_eq!(
            errors,
            [SpecError::SetAtCreation {
                field: "peerTls.enabled",
                old: "false".into(),
                new: "true".into()
            }]
        );
        assert!(validate_update(&new, &old).is_err(), "nor switched off");
        assert_eq!(validate_update(&new, &new.clone()), Ok(()));
    }

    #[test]
    fn warnings_flag_questionable_settings() {
        let mut spec = good();
        assert!(warnings(&spec).is_empty());
        spec.replicas = 4;
        assert_eq!(warnings(&spec), [SpecWarning::EvenReplicas(4)]);
        spec.replicas = 1;
        spec.hnsw.ef_construction = 8;
        assert_eq!(
            warnings(&spec),
            [
                SpecWarning::SingleReplica,
                SpecWarning::EfConstructionBelowM {
                    ef_construction: 8,
                    m: 16
                }
            ]
        );
        assert_eq!(
            SpecWarning::EvenReplicas(4).to_string(),
            "spec.replicas = 4 is even: a Raft group of 4 tolerates no more failures than one of 3"
        );
    }
}
