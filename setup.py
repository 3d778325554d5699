"""Build script: generates the gRPC/protobuf stubs from protos/ whenever the package is built or installed."""

from __future__ import annotations

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "services"


def generate_stubs() -> list[str]:
    """Runs protoc over protos/ into services/splitserve/api and returns the generated packages."""
    from grpc_tools import protoc  # build-time dependency (pyproject [build-system])

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={OUT_ROOT}",
            f"--pyi_out={OUT_ROOT}", f"--grpc_python_out={OUT_ROOT}", *protos]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    packages = sorted({str(Path(p).parent).replace("/", ".") for p in protos})
    for package in packages:  # protoc writes no __init__.py; add them up to splitserve.api
        parts = package.split(".")
        for depth in range(2, len(parts) + 1):
            init = OUT_ROOT.joinpath(*parts[:depth], "__init__.py")
            if not init.exists():
                init.write_text('"""Generated from protos/ by the build; do not edit."""\n')
    return packages


def api_packages() -> list[str]:
    names = {"splitserve.api"}
    for proto in PROTO_ROOT.rglob("*.proto"):
        parts = proto.relative_to(PROTO_ROOT).parent.parts
        names.update(".".join(parts[:d]) for d in range(3, len(parts) + 1))
    return sorted(names)


# Every build (wheel, sdist, editable) runs this file, so the stubs always match protos/.
generate_stubs()
setup(packages=[
    "splitserve", "splitserve.common", "splitserve.link", "splitserve.generator", "splitserve.generator.engines",
    "splitserve.generator.engines.native", "splitserve.tokenizer", "splitserve.bench", "splitserve_client",
    *api_packages()])
