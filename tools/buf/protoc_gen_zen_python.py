"""protoc plugin: Python message modules (_pb2, .pyi) and grpcio stubs (_pb2_grpc).

buf (or protoc) sends a CodeGeneratorRequest on stdin. We write its files, which include every
transitive import, as a FileDescriptorSet, run grpc_tools.protoc on it with
--descriptor_set_in (no .proto sources, no system protoc, no network), and send every produced
file back in a CodeGeneratorResponse. Each generated package directory also gets an empty
__init__.py so the output is a regular Python package tree.

Imports of google/api and google/rpc modules resolve to the PyPI package
googleapis-common-protos, so those files are not generated here (buf.gen.yaml excludes them).
"""

import os
import sys
import tempfile

try:
    from google.protobuf import descriptor_pb2
    from google.protobuf.compiler import plugin_pb2
    from grpc_tools import protoc
except ImportError as err:  # pragma: no cover - environment problem, reported to the user
    sys.stderr.write(
        f"protoc-gen-zen-python: {err}; install the development requirements "
        "(python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt) "
        "or point ZEN_PYTHON at an interpreter that has them\n"
    )
    sys.exit(1)


def generate(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    response = plugin_pb2.CodeGeneratorResponse()
    response.supported_features = plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    if not request.file_to_generate:
        return response

    with tempfile.TemporaryDirectory(prefix="zen-python-gen-") as tmp:
        descriptor_set = os.path.join(tmp, "input.binpb")
        with open(descriptor_set, "wb") as out:
            out.write(descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString())
        out_dir = os.path.join(tmp, "out")
        os.mkdir(out_dir)

        args = [
            "grpc_tools.protoc",
            f"--descriptor_set_in={descriptor_set}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *request.file_to_generate,
        ]
        if protoc.main(args) != 0:
            response.error = "grpc_tools.protoc failed (see its messages above)"
            return response

        produced = []
        for root, _dirs, files in os.walk(out_dir):
            for name in files:
                path = os.path.join(root, name)
                produced.append(os.path.relpath(path, out_dir).replace(os.sep, "/"))

        packages = set()
        for name in produced:
            parts = name.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                packages.add("/".join(parts[:depth]))

        for name in sorted(produced):
            with open(os.path.join(out_dir, name), "r", encoding="utf-8") as src:
                response.file.add(name=name, content=src.read())
        for package in sorted(packages):
            init = f"{package}/__init__.py"
            if init not in produced:
                response.file.add(name=init, content="")
    return response


def main() -> None:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = generate(request)
    sys.stdout.buffer.write(response.SerializeToString())


if __name__ == "__main__":
    main()
