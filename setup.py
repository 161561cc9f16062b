"""Build Tapio's Cython core against the system libbpf.

From a git checkout the .pyx files are cythonized; from an sdist the generated .c files are
compiled as they are (no Cython needed). The wire contract's Python modules are generated from
proto/ with grpcio-tools when it is installed, and shipped in the sdist otherwise.
"""
import os
import shlex
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
FAST = os.path.join("tapio", "_fast")
CYTHON_VERSION = (3, 0)

# Debug switches, as uvloop has them: TAPIO_CYTHON_ANNOTATE=1 writes the HTML annotation next to
# each .pyx; TAPIO_CYTHON_DEBUG=1 turns on Cython's bounds and wraparound checks everywhere.
ANNOTATE = os.environ.get("TAPIO_CYTHON_ANNOTATE") == "1"
DEBUG = os.environ.get("TAPIO_CYTHON_DEBUG") == "1"


def pkg_config(*args):
    try:
        out = subprocess.run(["pkg-config", *args, "libbpf"], check=True, capture_output=True,
                             text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        sys.exit("setup.py: libbpf not found by pkg-config: install libbpf-dev (Debian/Ubuntu) "
                 "or libbpf-devel (Fedora), then retry")
    return shlex.split(out)


def extensions():
    cflags = pkg_config("--cflags")
    libs = pkg_config("--libs")
    # every module of the core is one .pyx (checkout) or its generated .c (sdist)
    have_pyx = any(f.endswith(".pyx") for f in os.listdir(os.path.join(HERE, FAST)))
    suffix = ".pyx" if have_pyx else ".c"
    modules = sorted(f[:-len(suffix)] for f in os.listdir(os.path.join(HERE, FAST))
                     if f.endswith(suffix))
    exts = []
    for module in modules:
        source = os.path.join(FAST, module + suffix)
        exts.append(Extension(
            f"tapio._fast.{module}",
            [source],
            include_dirs=["bpf"],
            extra_compile_args=cflags + ["-Wno-unused-function"],
            extra_link_args=libs,
        ))
    if not have_pyx:
        return exts
    import Cython
    if tuple(int(x) for x in Cython.__version__.split(".")[:2]) < CYTHON_VERSION:
        sys.exit(f"setup.py: Cython >= {'.'.join(map(str, CYTHON_VERSION))} is needed, "
                 f"found {Cython.__version__}")
    from Cython.Build import cythonize
    directives = {"language_level": 3}
    if DEBUG:
        directives.update(boundscheck=True, wraparound=True)
    return cythonize(exts, compiler_directives=directives, annotate=ANNOTATE,
                     include_path=[HERE])


class BuildPyWithProto(build_py):
    """Generates tapio/v1/*_pb2*.py from proto/ first, when grpcio-tools is there."""

    def run(self):
        generate_proto()
        super().run()


class BuildExtWithProto(build_ext):
    """`build_ext --inplace` (the checkout build) generates the wire modules too."""

    def run(self):
        generate_proto()
        super().run()


def generate_proto():
    proto_dir = os.path.join(HERE, "proto")
    protos = sorted(os.path.join("tapio", "v1", p) for p in
                    os.listdir(os.path.join(proto_dir, "tapio", "v1")) if p.endswith(".proto"))
    try:
        from grpc_tools import protoc
    except ImportError:
        if not os.path.exists(os.path.join(HERE, "tapio", "v1", "events_pb2.py")):
            sys.exit("setup.py: tapio/v1/*_pb2.py are missing and grpcio-tools is not installed")
        return
    import grpc_tools
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = ["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={HERE}",
            f"--pyi_out={HERE}", f"--grpc_python_out={HERE}", *protos]
    if protoc.main(args) != 0:
        sys.exit("setup.py: protoc failed on " + " ".join(protos))
    init = os.path.join(HERE, "tapio", "v1", "__init__.py")
    if not os.path.exists(init):
        with open(init, "w") as f:
            f.write('"""Generated from proto/tapio/v1 at build time; do not edit."""\n')


setup(
    packages=find_packages(include=["tapio", "tapio.*"]),
    package_data={"tapio._fast": ["tapio.bpf.o", "*.pxd", "*.pxi"], "tapio.v1": ["*.pyi"],
                  "tapio.server": ["dashboard/*.html", "dashboard/*.js", "dashboard/*.css",
                                   "dashboard/*.svg"]},
    # MANIFEST.in puts the generated C in the sdist to build from; installs need only the .so
    exclude_package_data={"tapio._fast": ["*.c"]},
    ext_modules=extensions(),
    cmdclass={"build_py": BuildPyWithProto, "build_ext": BuildExtWithProto},
    zip_safe=False,
)
