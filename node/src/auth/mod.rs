//! API keys on the data plane (gRPC `Points` on 7070, the REST mirror on 7080).
//!
//! Off unless `--api-keys-file` and/or `--read-only-api-keys-file` is given (a standalone
//! node keeps working without keys). Each file holds keys one per line (`#` comments and
//! blank lines ignored), e.g. a key of a mounted Secret; the files are re-read every few
//! seconds ([`keys::ApiKeys::spawn_reload`]), so a key is rotated without a restart: add the
//! new key as a second line, move the clients over, remove the old one — both are valid
//! while both lines are there.
//!
//! A request carries its key as `authorization: Bearer <key>` (gRPC metadata or HTTP
//! header). No key or an unknown one: `UNAUTHENTICATED` / 401. A read-only key on a write
//! (`Upsert`, `UpsertStream`, `Delete`, REST upsert/delete): `PERMISSION_DENIED` / 403.
//! `/healthz`, `/readyz`, `/metrics` and `/openapi.json` stay open (probes and scrapers
//! hold no key), and so does the Admin port (internal: the operator and the other nodes;
//! mTLS is what will guard it, issue 18).
//!
//! Calls between nodes on the data port (a follower forwarding a write to its leader, a
//! coordinator fanning out to other shards) are checked like any client's: they carry the
//! caller's own `authorization` value ([`attach`]), so a node can never do more for a
//! caller than the caller's key allows, and the `kindex-shard-local` / `kindex-forwarded`
//! headers grant nothing by themselves. The value travels in a task-local set around each
//! request ([`scope`]): forwarding happens in the request's own task (no `spawn` between
//! the server and the outgoing call), so the forwarding code needs no extra parameter.

pub mod keys;

use std::future::Future;

pub use keys::ApiKeys;
pub use keys::KeyFileError;

/// The header (gRPC metadata key) carrying the key.
pub const AUTHORIZATION: &str = "authorization";

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Search, get, count, info.
    Read,
    /// Upsert and delete (a read-write key also reads).
    Write,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this node requires an API key: send `authorization: Bearer <key>`")]
    Missing,
    #[error("the `authorization` value is not `Bearer <key>`")]
    Malformed,
    #[error("invalid API key")]
    Invalid,
    #[error("this API key is read-only; writes need a read-write key")]
    ReadOnly,
}

impl AuthError {
    /// `UNAUTHENTICATED` for no or a wrong key, `PERMISSION_DENIED` for a read-only one.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            AuthError::ReadOnly => tonic::Status::permission_denied(self.to_string()),
            _ => tonic::Status::unauthenticated(self.to_string()),
        }
    }
}

/// The key in an `authorization` value `Bearer <key>` (scheme case-insensitive, RFC 6750).
pub fn bearer(value: &str) -> Result<&str, AuthError> {
    let (scheme, key) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    let key = key.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(key)
}

/// Checks an `authorization` value (None: the request had none) against `keys` for `need`.
/// With no keys configured every request passes.
pub fn check(keys: Option<&ApiKeys>, value: Option<&str>, need: Access) -> Result<(), AuthError> {
    let Some(keys) = keys else {
        return Ok(());
    };
    let key = bearer(value.ok_or(AuthError::Missing)?)?;
    keys.check(key, need)
}

tokio::task_local! {
    /// The `authorization` value of the request this task serves (see the module docs).
    static CALLER: Option<String>;
}

/// Runs `f` (serving one request) with the caller's `authorization` value, which
/// [`attach`] copies onto the calls `f` makes to other nodes.
pub async fn scope<F: Future>(authorization: Option<String>, f: F) -> F::Output {
    CALLER.scope(authorization, f).await
}

/// Puts the caller's `authorization` value (if any) on an outgoing request to another node.
pub fn attach(metadata: &mut tonic::metadata::MetadataMap) {
    let value = CALLER.try_with(|c| c.clone()).ok().flatten();
    if let Some(v) = value.and_then(|v| v.parse().ok()) {
        metadata.insert(AUTHORIZATION, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_values_parse() {
        assert_eq!(bearer("Bearer abc"), Ok("abc"));
        assert_eq!(bearer("bearer  abc "), Ok("abc"));
        assert_eq!(bearer("Basic abc"), Err(AuthError::Malformed));
        assert_eq!(bearer("Bearer"), Err(AuthError::Malformed));
        assert_eq!(bearer("Bearer "), Err(AuthError::Malformed));
        assert_eq!(bearer("abc"), Err(AuthError::Malformed));
    }

    #[test]
    fn no_keys_configured_lets_everything_through() {
        assert_eq!(check(None, None, Access::Write), Ok(()));
    }

    #[test]
    fn statuses_name_the_reason() {
        assert_eq!(
            AuthError::Missing.to_status().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            AuthError::Invalid.to_status().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            AuthError::ReadOnly.to_status().code(),
            tonic::Code::PermissionDenied
        );
    }

    #[tokio::test]
    async fn the_callers_value_travels_with_the_task() {
        let mut md = tonic::metadata::MetadataMap::new();
        attach(&mut md);
        assert!(md.get(AUTHORIZATION).is_none(), "no request in scope");
        scope(Some("Bearer k".into()), async {
            attach(&mut md);
        })
        .await;
        assert_eq!(md.get(AUTHORIZATION).unwrap(), "Bearer k");
    }
}
