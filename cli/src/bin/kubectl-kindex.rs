//! `kubectl-kindex`: the same client installed as a kubectl plugin, so
//! `kubectl kindex status` works once this binary is on PATH.

fn main() -> std::process::ExitCode {
    kindex::run(kindex::Flavor::KubectlPlugin)
}
