"""Build hook: generate the gRPC stubs from the repository's .proto files.

The protobuf contract lives in ``proto/proto/kindex/v1`` at the repository root
(the Rust crates build from the same files). Generated Python code is not
checked in: it would drift from the .proto files unnoticed. Instead, every
wheel build runs grpcio-tools' bundled protoc (no system protoc needed) and
puts ``kindex/v1/{points,admin}_pb2{,_grpc}.py`` plus ``.pyi`` type stubs into
the build directory. ``KINDEX_PROTO_DIR`` overrides where the .proto files are
(the directory that contains ``kindex/v1``).
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# Only the client-facing services; raft.proto is node-to-node.
PROTOS = ["kindex/v1/points.proto", "kindex/v1/admin.proto"]


def proto_root() -> Path:
    env = os.environ.get("KINDEX_PROTO_DIR")
    candidates = [Path(env)] if env else []
    candidates += [HERE / "proto", HERE.parent.parent / "proto" / "proto"]
    for c in candidates:
        if all((c / p).is_file() for p in PROTOS):
            return c
    raise SystemExit(
        "kindex: cannot find the .proto files (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); build from a kindex checkout or set KINDEX_PROTO_DIR"
    )


def generate(out: Path) -> None:
    from grpc_tools import protoc  # build requirement (pyproject.toml)
    import importlib.resources

    root = proto_root()
    include = str(importlib.resources.files("grpc_tools") / "_proto")
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"kindex: protoc failed on {PROTOS} in {root}")
    init = out / "kindex" / "v1" / "__init__.py"
    init.write_text('"""Generated at build time from proto/kindex/v1 (see setup.py)."""\n')


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        super().run()
        generate(Path(self.build_lib))


setup(cmdclass={"build_py": BuildPyWithStubs})
