//! The distance metric: its wire spelling (YAML, JSON, flags, logs) and its aliases.

use serde::{Deserialize, Serialize};

/// Distance metric between vectors.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// 1 - cosine similarity.
    Cosine,
    /// Euclidean (squared L2) distance.
    L2,
    /// Negative dot product.
    Dot,
}

impl Metric {
    /// The spelling used in YAML, config files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::L2 => "l2",
            Metric::Dot => "dot",
        }
    }

    /// Parses a flag or request value; case-insensitive, with the common aliases
    /// (`euclidean`, `ip`). Serde accepts only the canonical spelling.
    pub fn parse(s: &str) -> Option<Metric> {
        match s.to_ascii_lowercase().as_str() {
            "cosine" => Some(Metric::Cosine),
            "l2" | "euclidean" => Some(Metric::L2),
            "dot" | "ip" => Some(Metric::Dot),
            _ => None,
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_spelling_round_trips() {
        for m in [Metric::Cosine, Metric::L2, Metric::Dot] {
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.as_str()));
            assert_eq!(serde_json::from_str::<Metric>(&json).unwrap(), m);
            assert_eq!(Metric::parse(m.as_str()), Some(m));
        }
        assert_eq!(Metric::parse("Euclidean"), Some(Metric::L2));
        assert_eq!(Metric::parse("ip"), Some(Metric::Dot));
        assert_eq!(Metric::parse("manhattan"), None);
        assert!(serde_json::from_str::<Metric>("\"euclidean\"").is_err());
    }
}
