//! `kindex`: the command-line client (see the library for the commands).

fn main() -> std::process::ExitCode {
    kindex::run(kindex::Flavor::Kindex)
}
