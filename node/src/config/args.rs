//! The node's structural flags. The operator passes them to every pod as `KINDEX_*`
//! environment variables; they live in the library so a test can feed it what the
//! operator renders and check both sides agree on the structural hash.

use kindex_common::{Metric, Quantization, StructuralConfig};

#[derive(Debug, Clone, clap::Args)]
pub struct StructuralArgs {
    /// Structural: vector dimension (fixed for the life of the data).
    #[arg(long, env = "KINDEX_DIMENSION", default_value_t = 384)]
    pub dimension: u32,
    /// Structural: cosine | l2 | dot.
    #[arg(long, env = "KINDEX_METRIC", default_value = "cosine", value_parser = parse_metric)]
    pub metric: Metric,
    /// Structural: HNSW links per node.
    #[arg(long, env = "KINDEX_M", default_value_t = 16)]
    pub m: u32,
    /// Structural: HNSW construction beam width.
    #[arg(long, env = "KINDEX_EF_CONSTRUCTION", default_value_t = 200)]
    pub ef_construction: u32,
    /// Structural: number of shards of the index.
    #[arg(long, env = "KINDEX_SHARDS", default_value_t = 1)]
    pub shards: u32,
    /// Structural: none | int8 | binary (graph walked on codes, exact rescoring with f32).
    #[arg(long, env = "KINDEX_QUANTIZATION", default_value = "none", value_parser = parse_quantization)]
    pub quantization: Quantization,
}

fn parse_quantization(s: &str) -> Result<Quantization, String> {
    Quantization::parse(s)
        .ok_or_else(|| format!("unknown quantization {s:?}; use none, int8 or binary"))
}

fn parse_metric(s: &str) -> Result<Metric, String> {
    Metric::parse(s).ok_or_else(|| format!("unknown metric {s:?}; use cosine, l2 or dot"))
}

impl StructuralArgs {
    pub fn config(&self) -> StructuralConfig {
        StructuralConfig {
            dimension: self.dimension,
            metric: self.metric,
            m: self.m,
            ef_construction: self.ef_construction,
            shards: self.shards,
            quantization: self.quantization,
        }
    }
}
