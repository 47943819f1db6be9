"""Build hook: the protobuf classes are generated from the repository's one
wire contract, proto/biomatch.proto, while the package is built, never
copied into it. BIOMATCH_PROTO names another copy of the file (a source
archive of the package alone)."""
import os
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithProto(build_py):
    def run(self):
        super().run()
        proto = os.environ.get("BIOMATCH_PROTO") or os.path.join(
            HERE, "..", "..", "proto", "biomatch.proto")
        proto = os.path.abspath(proto)
        if not os.path.exists(proto):
            raise SystemExit(f"biomatch-client: {proto} not found (set BIOMATCH_PROTO)")
        out = os.path.join(self.build_lib, "biomatch_client")
        os.makedirs(out, exist_ok=True)
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc",
                        f"-I{os.path.dirname(proto)}", f"--python_out={out}", proto],
                       check=True)


setup(cmdclass={"build_py": BuildWithProto})
