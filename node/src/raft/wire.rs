//! Byte encoding of Raft messages and log records.
//!
//! Messages travel as opaque bytes inside the protobuf envelopes of `kindex.v1.Raft`
//! (`RaftRequest.data`, `RaftReply.data`, `SnapshotChunk.meta`). Layout: one version byte, then
//! postcard. postcard is compact (an f32 is 4 bytes) and has no schema, so a new field means a new
//! version byte; a receiver refuses versions it does not know instead of misreading them.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Current encoding version.
pub const WIRE_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("empty message")]
    Empty,
    #[error("unsupported wire version {0} (this node speaks {WIRE_VERSION})")]
    Version(u8),
    #[error("cannot encode: {0}")]
    Encode(postcard::Error),
    #[error("cannot decode: {0}")]
    Decode(postcard::Error),
}

impl From<WireError> for std::io::Error {
    fn from(e: WireError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// Encode `v` as `[WIRE_VERSION] ++ postcard(v)`.
pub fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, WireError> {
    let mut buf = vec![WIRE_VERSION];
    postcard::to_io(v, &mut buf).map_err(WireError::Encode)?;
    Ok(buf)
}

/// Decode bytes produced by [`encode`]; rejects unknown versions and trailing garbage.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let (v, rest) = postcard::take_from_bytes(body).map_err(WireError::Decode)?;
    if !rest.is_empty() {
        return Err(WireError::Decode(postcard::Error::DeserializeBadEncoding));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::collections::BTreeSet;

    use openraft::raft::AppendEntriesRequest;
    use openraft::raft::AppendEntriesResponse;
    use openraft::raft::VoteRequest;
    use openraft::raft::VoteResponse;

    use super::*;
    use crate::raft::Command;
    use crate::raft::Entry;
    use crate::raft::LogId;
    use crate::raft::Member;
    use crate::raft::Membership;
    use crate::raft::PointRecord;
    use crate::raft::SnapshotMeta;
    use crate::raft::StoredMembership;
    use crate::raft::TypeConfig;
    use crate::raft::Vote;

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(
            openraft::impls::leader_id_adv::LeaderId {
                term,
                node_id: node,
            },
            index,
        )
    }

    #[test]
    fn openraft_messages_round_trip_through_postcard() {
        let membership = Membership::new(
            vec![BTreeSet::from([1, 2, 3])],
            (1..=4)
                .map(|i| (i, Member::new(format!("h{i}:7071"))))
                .collect::<BTreeMap<_, _>>(),
        )
        .unwrap();
        let entries: Vec<Entry> = vec![
            Entry {
                log_id: log_id(1, 1, 1),
                payload: openraft::EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(1, 1, 2),
                payload: openraft::EntryPayload::Normal(Command::Upsert {
                    points: vec![PointRecord {
                        id: "a".into(),
                        vector: vec![1.5, -2.0, f32::MIN_POSITIVE],
                        payload_json: Some("{\"k\":1}".into()),
                    }],
                }),
            },
            Entry {
                log_id: log_id(2, 3, 3),
                payload: openraft::EntryPayload::Membership(membership.clone()),
            },
        ];
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 3),
            prev_log_id: Some(log_id(1, 1, 0)),
            entries: entries.clone(),
            leader_commit: Some(log_id(1, 1, 1)),
        };
        let back: AppendEntriesRequest<TypeConfig> = decode(&encode(&req).unwrap()).unwrap();
        assert_eq!(back.vote, req.vote);
        assert_eq!(back.entries, entries);
        assert_eq!(back.prev_log_id, req.prev_log_id);

        for resp in [
            AppendEntriesResponse::<TypeConfig>::Success,
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(Vote::new(5, 2)),
        ] {
            let back: AppendEntriesResponse<TypeConfig> = decode(&encode(&resp).unwrap()).unwrap();
            assert_eq!(back, resp);
        }

        let vote = VoteRequest::<TypeConfig>::new(Vote::new(3, 2), Some(log_id(2, 1, 9)));
        let back: VoteRequest<TypeConfig> = decode(&encode(&vote).unwrap()).unwrap();
        assert_eq!(back, vote);
        let vr = VoteResponse::<TypeConfig>::new(Vote::new(3, 2), Some(log_id(2, 1, 9)), true);
        let back: VoteResponse<TypeConfig> = decode(&encode(&vr).unwrap()).unwrap();
        assert_eq!(back, vr);

        let meta = SnapshotMeta {
            last_log_id: Some(log_id(2, 3, 9)),
            last_membership: StoredMembership::new(Some(log_id(2, 3, 3)), membership),
        };
        let back: SnapshotMeta = decode(&encode(&meta).unwrap()).unwrap();
        assert_eq!(back, meta);
    }

    #[test]
    fn rejects_unknown_version_and_garbage() {
        let mut b = encode(&7u32).unwrap();
        assert!(matches!(decode::<u32>(&[]), Err(WireError::Empty)));
        b[0] = 9;
        assert!(matches!(decode::<u32>(&b), Err(WireError::Version(9))));
        let mut b = encode(&7u32).unwrap();
        b.push(0);
        assert!(decode::<u32>(&b).is_err());
    }
}
