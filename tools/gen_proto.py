"""Generate the protobuf, gRPC and typing stubs of valka.v1 from proto/valka/v1/*.proto.

    python tools/gen_proto.py [--out DIR]

Files land in DIR/valka/v1/ (DIR defaults to the repository root) and import as
`valka.v1.common_pb2`. setup.py calls `generate()` while building, so a wheel always matches
the .proto files; the committed copies exist for editors, type checking and running from the
source tree, and a unit test fails when they are stale.
"""

from __future__ import annotations

import argparse
import stat
import sys
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
PACKAGE_DIR = Path("valka") / "v1"
INIT_TEXT = '"""Generated protobuf and gRPC stubs: run `make proto`, do not edit."""\n'

# The plugins are run through this interpreter rather than found on PATH: in pip's isolated
# build environment the scripts of build requirements are not always on PATH.
_PLUGINS = {
    "mypy": "from mypy_protobuf.main import main; main()",
    "mypy_grpc": "from mypy_protobuf.main import grpc; grpc()",
}


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    return sorted((proto_root / PACKAGE_DIR).glob("*.proto"))


def _write_plugin(directory: Path, name: str, code: str) -> Path:
    path = directory / f"protoc-gen-{name}"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "{code}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def generate(out_dir: Path = REPO_ROOT, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc on every .proto of valka/v1; return the files written, sorted."""
    # Imported here: grpc_tools is a build-time tool, and it ships no type information.
    from grpc_tools import protoc  # type: ignore[import-untyped]

    protos = proto_files(proto_root)
    if not protos:
        raise RuntimeError(f"no .proto files under {proto_root / PACKAGE_DIR}")
    target = out_dir / PACKAGE_DIR
    target.mkdir(parents=True, exist_ok=True)
    # Remove stubs of deleted .proto files so they cannot linger.
    for old in target.glob("*_pb2*.py*"):
        old.unlink()

    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory(prefix="valka-protoc-") as tmp:
        plugin_args = [
            f"--plugin=protoc-gen-{name}={_write_plugin(Path(tmp), name, snippet)}"
            for name, snippet in _PLUGINS.items()
        ]
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            *plugin_args,
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"--mypy_out=quiet:{out_dir}",
            f"--mypy_grpc_out=quiet:{out_dir}",
            *(str(p) for p in protos),
        ]
        status = protoc.main(args)
    if status != 0:
        raise RuntimeError(f"protoc failed with exit code {status}")

    init = target / "__init__.py"
    if not init.exists():
        init.write_text(INIT_TEXT)
    return sorted(target.glob("*_pb2*.py*"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT,
        help="root of the output tree (default: the repository root)",
    )
    args = parser.parse_args(argv)
    for path in generate(args.out.resolve()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
