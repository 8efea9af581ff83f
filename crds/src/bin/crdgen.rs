//! Print the VectorIndex CRD as YAML, or write it to `crds/vectorindex.yaml`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Generate the kindex VectorIndex CustomResourceDefinition")]
struct Args {
    /// Write the manifest to --output instead of printing it.
    #[arg(long)]
    write: bool,
    /// Where --write puts the manifest.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/vectorindex.yaml"))]
    output: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let yaml = match kindex_crds::crd_yaml() {
        Ok(yaml) => yaml,
        Err(e) => {
            eprintln!("crdgen: cannot serialize the CRD: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !args.write {
        print!("{yaml}");
        return ExitCode::SUCCESS;
    }
    match std::fs::write(&args.output, yaml) {
        Ok(()) => {
            eprintln!("crdgen: wrote {}", args.output.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crdgen: cannot write {}: {e}", args.output.display());
            ExitCode::FAILURE
        }
    }
}
