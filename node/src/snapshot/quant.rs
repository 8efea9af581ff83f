//! The `Quant` section (format 5): an int8 shard's ranges and when it retrains them
//! (`engine::quant::Plan`), so a replica that loads a snapshot codes exactly as the replica
//! that wrote it.
//!
//! Layout (little endian): `u32 dim`, `u64 trained_live`, `u64 changes`, then `dim` f32
//! offsets and `dim` f32 steps.

use std::sync::Arc;

use crate::engine::quant::{Plan, Ranges};

const HEADER: usize = 4 + 8 + 8;

/// The section payload of a plan with ranges (None without: nothing to store).
pub fn encode(plan: &Plan) -> Option<Vec<u8>> {
    let r = plan.ranges.as_ref()?;
    let mut out = Vec::with_capacity(HEADER + r.dim() * 8);
    out.extend_from_slice(&(r.dim() as u32).to_le_bytes());
    out.extend_from_slice(&plan.trained_live.to_le_bytes());
    out.extend_from_slice(&plan.changes.to_le_bytes());
    for x in r.offset().iter().chain(r.step()) {
        out.extend_from_slice(&x.to_le_bytes());
    }
    Some(out)
}

/// A plan from a section payload, for a shard of `dim` dimensions.
pub fn decode(raw: &[u8], dim: usize) -> Result<Plan, String> {
    let u64_at = |at: usize| -> u64 {
        raw.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    let stored_dim = raw
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or("quant section shorter than its header")? as usize;
    if stored_dim != dim {
        return Err(format!(
            "quant section has ranges for {stored_dim} dimensions, the shard has {dim}"
        ));
    }
    if raw.len() != HEADER + dim * 8 {
        return Err(format!(
            "quant section has {} bytes, {} expected for {dim} dimensions",
            raw.len(),
            HEADER + dim * 8
        ));
    }
    let floats: Vec<f32> = raw[HEADER..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let (offset, step) = floats.split_at(dim);
    let ranges = Ranges::from_parts(offset.to_vec(), step.to_vec())
        .map_err(|e| format!("quant section: {e}"))?;
    Ok(Plan {
        ranges: Some(Arc::new(ranges)),
        trained_live: u64_at(4),
        changes: u64_at(12),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plan(dim: usize) -> Plan {
        let vs: Vec<Vec<f32>> = (0..20)
            .map(|i| {
                (0..dim)
                    .map(|d| (i * dim + d) as f32 * 0.37 - 3.0)
                    .collect()
            })
            .collect();
        Plan {
            changes: 17,
            ..Plan::train(dim, 20, vs.iter().map(|v| v.as_slice()))
        }
    }

    #[test]
    fn round_trip() {
        let p = plan(5);
        let raw = encode(&p).unwrap();
        assert_eq!(decode(&raw, 5).unwrap(), p);
        assert!(encode(&Plan::default()).is_none());
    }

    #[test]
    fn refuses_other_dimensions_and_lengths() {
        let raw = encode(&plan(5)).unwrap();
        assert!(decode(&raw, 6).unwrap_err().contains("5 dimensions"));
        assert!(decode(&raw[..raw.len() - 1], 5).is_err());
        assert!(decode(&raw[..3], 5).is_err());
        let mut longer = raw.clone();
        longer.push(0);
        assert!(decode(&longer, 5).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

        /// Any bytes: an error or a plan whose ranges are finite, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(dim in 0usize..6, raw in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = decode(&raw, dim) {
                let r = p.ranges.unwrap();
                prop_assert!(r.offset().iter().chain(r.step()).all(|x| x.is_finite()));
            }
        }

        /// A valid section with its header kept and the floats replaced by any bits.
        #[test]
        fn arbitrary_floats_are_checked(bits in proptest::collection::vec(any::<u32>(), 8)) {
            let mut raw = encode(&plan(4)).unwrap();
            for (i, b) in bits.iter().enumerate() {
                raw[HEADER + i * 4..HEADER + i * 4 + 4].copy_from_slice(&b.to_le_bytes());
            }
            let fl: Vec<f32> = bits.iter().map(|b| f32::from_bits(*b)).collect();
            let valid = fl.iter().all(|x| x.is_finite()) && fl[4..].iter().all(|s| *s >= 0.0);
            prop_assert_eq!(decode(&raw, 4).is_ok(), valid);
        }
    }
}
