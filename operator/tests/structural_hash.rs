//! The operator and the node agree on the structural hash of a spec. The operator's side:
//! the hash it stamps on the pod template and records in the ConfigMap. The node's side:
//! what the node computes from the environment and arguments the operator renders into
//! the pod, parsed by the node's own flag definitions (`StructuralArgs`). A renamed
//! variable, a field rendered from the wrong spec value, or a node default taking over
//! for a value the operator forgot to pass makes them differ.
#![allow(clippy::unwrap_used)]

use clap::{CommandFactory, Parser};
use kindex_common::{Metric, Quantization};
use kindex_crds::VectorIndex;
use kindex_node::config::args::StructuralArgs;
use kindex_operator::build::labels::STRUCTURAL_HASH;
use kindex_operator::build::{StatefulSetParams, configmap, statefulset};
use kindex_operator::validate::ValidIndex;

/// The node's structural flags, alone.
#[derive(Parser)]
struct NodeFlags {
    #[command(flatten)]
    structural: StructuralArgs,
}

fn fixture() -> VectorIndex {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/production.yaml"
    );
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The node's structural config as the pod of `shard` would compute it: the container's
/// literal env vars and args, mapped onto the node's flags by their `env`/`long` names.
fn node_side(vi: &VectorIndex, shard: u32) -> kindex_common::StructuralConfig {
    let vi = ValidIndex::new(vi, "node:test").unwrap();
    let params = StatefulSetParams::from_spec(&vi, vi.spec.replicas as i32);
    let sts = statefulset::build_statefulset(&vi, shard, &params);
    let pod = sts.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let cmd = NodeFlags::command();
    let mut argv = vec!["kindex-node".to_owned()];
    for e in c.env.iter().flatten() {
        let Some(value) = &e.value else { continue };
        let flag = cmd
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|n| n == e.name.as_str()));
        if let Some(flag) = flag {
            argv.push(format!("--{}={value}", flag.get_long().unwrap()));
        }
    }
    // Structural flags passed as arguments (none today) count too.
    let args = c.args.clone().unwrap_or_default();
    for pair in args.windows(2) {
        let known = cmd
            .get_arguments()
            .any(|a| a.get_long().is_some_and(|l| pair[0] == format!("--{l}")));
        if known {
            argv.push(format!("{}={}", pair[0], pair[1]));
        }
    }
    NodeFlags::try_parse_from(&argv)
        .unwrap()
        .structural
        .config()
}

fn operator_side(vi: &VectorIndex, shard: u32) -> (String, String) {
    let vi = ValidIndex::new(vi, "node:test").unwrap();
    let params = StatefulSetParams::from_spec(&vi, vi.spec.replicas as i32);
    let sts = statefulset::build_statefulset(&vi, shard, &params);
    let annotations = sts
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap();
    let cm = configmap::build_configmap(&vi);
    let recorded = configmap::recorded_structural(&cm).unwrap();
    (annotations[STRUCTURAL_HASH].clone(), recorded.hash)
}

#[test]
fn operator_and_node_compute_the_same_hash() {
    let mut vi = fixture();
    let cases = [Metric::Cosine, Metric::L2, Metric::Dot]
        .into_iter()
        .flat_map(|m| [Quantization::Int8, Quantization::None].map(|q| (m, q)));
    for (metric, quantization) in cases {
        vi.spec.metric = metric;
        vi.spec.quantization = quantization;
        for shard in 0..vi.spec.shards {
            let node = node_side(&vi, shard);
            // Every field differs from the node's defaults (quantization: in the int8
            // cases), so a value the operator does not pass (the node default takes
            // over) is caught too.
            assert_eq!(node, vi.spec.structural(), "shard {shard}");
            let (annotation, recorded) = operator_side(&vi, shard);
            assert_eq!(
                node.hash(),
                annotation,
                "pod template, {metric} {quantization} shard {shard}"
            );
            assert_eq!(
                node.hash(),
                recorded,
                "ConfigMap, {metric} {quantization} shard {shard}"
            );
        }
    }
}
