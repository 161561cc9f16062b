#!/usr/bin/env bash
# Tapio's one entry point. Every step runs the steps it needs first, and skips what is done.
#
#   ./build.sh deps     system packages (apt) and the Python venv (.venv)
#   ./build.sh build    BPF object, wire-contract modules, Cython core (into .venv, editable)
#   ./build.sh run      the collector (and the server) on this host, with embedded defaults
#   ./build.sh test     the test suite (real eBPF: run as root)
#   ./build.sh bench    the benchmarks (tables on stdout, JSON under benchmarks/results/)
#   ./build.sh fuzz [SECONDS [TARGET...]]  the fuzz targets of tests/fuzz (atheris), SECONDS each;
#                       TAPIO_ASAN=1 builds the core under AddressSanitizer for them first
#   ./build.sh sdist    dist/tapio-<version>.tar.gz that builds offline with gcc and libbpf-dev
#   ./build.sh bundle   dist/bundle/tapio-bundle-*.tar.gz (or into DIR: bundle DIR): for air-gapped hosts
#   ./build.sh image    localhost/tapio/{collector,server}:<version>, built offline with podman
#   ./build.sh clean    remove build outputs
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
PYTHON=${PYTHON:-python3}
BPF_OBJ=tapio/_fast/tapio.bpf.o

APT_BUILD=(clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev pkg-config gcc make)
# prometheus and chromium: a real Prometheus scrapes /metrics, a headless browser loads the dashboard
# bpftrace: the reference the overhead benchmark compares against
# postgresql and nats-server: the scale-out tests start their own instances (tests/postgres.py,
# tests/nats_cluster.py) on free loopback ports
APT_TEST=(stress-ng iproute2 prometheus chromium bpftrace postgresql nats-server)
# real containers: podman (with runc) runs them, mmdebstrap makes their base image with no image
# registry, kubectl checks the Kubernetes manifests
APT_CONTAINERS=(podman runc mmdebstrap)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 2; }

# One build at a time: concurrent runs (two terminals, parallel test sessions) wait here.
lock() {
    exec 9>"$ROOT/.build.lock"
    flock 9
}

INSTALLED=()     # what apt_install installed in this run

apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    local sudo=()
    [ "$(id -u)" -ne 0 ] && sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    INSTALLED+=("${missing[@]}")
}

# Debian's prometheus package starts a service on :9090, tapio-server's gRPC port, postgresql
# one on :5432 and nats-server one on :4222: the tests run their own instances, so a service this
# script brought in is stopped again (and not started at boot).
stop_installed_services() {
    local package
    for package in prometheus postgresql nats-server; do
        [[ " ${INSTALLED[*]} " == *" $package "* ]] || continue
        command -v systemctl >/dev/null && systemctl is-active --quiet "$package" 2>/dev/null || continue
        log "stopping the $package service Debian started (the tests run their own)"
        systemctl disable --now "$package" >/dev/null 2>&1 || true
    done
    # without systemd, Debian's postgresql starts its cluster through pg_ctlcluster
    if [[ " ${INSTALLED[*]} " == *" postgresql "* ]] && command -v pg_lsclusters >/dev/null; then
        pg_lsclusters --no-header 2>/dev/null | while read -r version cluster _ status _; do
            [ "$status" = online ] || continue
            log "stopping the PostgreSQL cluster $version/$cluster Debian started"
            pg_ctlcluster "$version" "$cluster" stop >/dev/null 2>&1 || true
        done || true
    fi
}

python_headers() {
    "$PYTHON" - <<'EOF' || return 1
import os, sysconfig, sys
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
EOF
}

cmd_deps() {
    apt_install "${APT_BUILD[@]}"
    command -v "$PYTHON" >/dev/null || die "no $PYTHON on PATH: install Python >= 3.10 (python3, python3-venv, python3-dev)"
    if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then apt_install python3-venv; fi
    python_headers || apt_install python3-dev
    local stamp="$VENV/.requirements.sha"
    local want
    want=$(cat requirements/*.txt | sha256sum | cut -d' ' -f1)
    if [ ! -x "$PY" ]; then
        log "creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
            log "installing Python packages into $VENV"
            "$PY" -m pip install -q --upgrade pip
            "$PY" -m pip install -q -r requirements/dev.txt
            echo "$want" >"$stamp"
    fi
}

# Compile each bpf/<family>.bpf.c on its own, then link them into the one object the package ships.
build_bpf() {
    local arch
    case "$(uname -m)" in
        x86_64) arch=x86 ;;
        aarch64) arch=arm64 ;;
        *) arch=$(uname -m) ;;
    esac
    mkdir -p build/bpf
    local objs=() stale=0
    for src in bpf/*.bpf.c; do
        local obj="build/bpf/$(basename "${src%.bpf.c}").o"
        objs+=("$obj")
        if [ ! -f "$obj" ] || [ -n "$(find "$src" bpf/*.h -newer "$obj" 2>/dev/null | head -1)" ]; then
            log "clang $src"
            clang -g -O2 -Wall -Werror -target bpf "-D__TARGET_ARCH_$arch" -Ibpf -c "$src" -o "$obj"
            stale=1
        fi
    done
    if [ "$stale" = 1 ] || [ ! -f "$BPF_OBJ" ]; then
        log "linking $BPF_OBJ"
        bpftool gen object "$BPF_OBJ" "${objs[@]}"
    fi
}

cmd_build() {
    cmd_deps
    lock
    build_bpf
    # setup.py generates tapio/v1 from proto/ and cythonizes only what changed
    log "building the Cython core"
    local cc=()
    if [ "${TAPIO_ASAN:-}" = 1 ]; then
        # libFuzzer's coverage hooks (-fsanitize=fuzzer-no-link) are clang's
        log "... under AddressSanitizer (TAPIO_ASAN=1): run it with ./build.sh fuzz"
        cc=(CC=clang "LDSHARED=clang -shared")
    fi
    env "${cc[@]}" "$PY" setup.py -q build_ext --inplace >/dev/null
    # -I: the check must not find ./tapio through the current directory
    if [ ! -x "$VENV/bin/tapio-collector" ] ||
        ! "$PY" -I -c 'import tapio, sys; sys.exit(0 if tapio.__file__.startswith(sys.argv[1]) else 1)' "$ROOT" 2>/dev/null; then
        log "installing tapio into $VENV (editable)"
        env "${cc[@]}" "$PY" -m pip install -q --no-build-isolation --no-deps -e . >/dev/null
    fi
    flock -u 9
}

cmd_run() {
    cmd_build
    exec "$ROOT/scripts/run-local.sh" "$@"
}

# An independent gRPC implementation for the interop tests (npm's @grpc/grpc-js).
interop_deps() {
    command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
    local dir=tests/interop
    if [ ! -d "$dir/node_modules/@grpc/grpc-js" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
        log "installing the grpc-js interop client (npm)"
        npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >/dev/null
        touch "$dir/node_modules"
    fi
}

container_deps() {
    apt_install "${APT_CONTAINERS[@]}"
    # any kubectl will do (Google's SDK ships one that Debian's kubernetes-client would overwrite)
    command -v kubectl >/dev/null || apt_install kubernetes-client
}

cmd_test() {
    cmd_build
    apt_install "${APT_TEST[@]}"
    container_deps
    stop_installed_services
    interop_deps
    "$VENV/bin/pytest" -q "$@"
}

cmd_bench() {
    cmd_build
    apt_install "${APT_TEST[@]}"
    mkdir -p benchmarks/results
    local names=("$@")
    [ ${#names[@]} -eq 0 ] && names=(codec ringbuf e2e correlate precision overhead read_interval history scale)
    for b in "${names[@]}"; do
        [ -f "benchmarks/$b.py" ] || die "no benchmark named $b (benchmarks/*.py)"
        "$PY" "benchmarks/$b.py" --json "benchmarks/results/$b.json"
    done
}

# Each target runs SECONDS (default 60) from its seeds in tests/fuzz/corpus/TARGET; what it finds
# goes to build/fuzz/ (new inputs to build/fuzz/corpus-TARGET, crashes as build/fuzz/crash-*).
# Under TAPIO_ASAN=1 the core is built with AddressSanitizer and Python runs with atheris'
# sanitizer runtime preloaded.
cmd_fuzz() {
    local seconds=${1:-60}
    [[ "$seconds" =~ ^[0-9]+$ ]] || die "fuzz: SECONDS is a whole number, not '$seconds'"
    [ $# -gt 0 ] && shift
    cmd_build
    local targets=("$@")
    [ ${#targets[@]} -eq 0 ] && targets=(decoder response filters)
    local env=()
    if [ "${TAPIO_ASAN:-}" = 1 ]; then
        local runtime
        runtime="$("$PY" -c 'import atheris; print(atheris.path())')/asan_with_fuzzer.so"
        [ -f "$runtime" ] || die "fuzz: no $runtime (atheris' AddressSanitizer runtime)"
        # Python itself leaks by design: only memory errors count
        env=(LD_PRELOAD="$runtime" ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1")
    fi
    mkdir -p build/fuzz
    local failed=()
    for t in "${targets[@]}"; do
        [ -d "tests/fuzz/corpus/$t" ] || die "fuzz: no target named $t (tests/fuzz/corpus/*)"
        mkdir -p "build/fuzz/corpus-$t"
        log "fuzzing $t for ${seconds}s"
        env "${env[@]}" "$PY" -m tests.fuzz.run "$t" "-max_total_time=$seconds" -max_len=65536 \
            -timeout=10 -rss_limit_mb=4096 -artifact_prefix=build/fuzz/ \
            "build/fuzz/corpus-$t" "tests/fuzz/corpus/$t" || failed+=("$t")
    done
    [ ${#failed[@]} -eq 0 ] || die "fuzz: findings in ${failed[*]} (build/fuzz/crash-*)"
}

cmd_sdist() {
    cmd_build
    lock
    rm -rf dist
    "$PY" -m build --sdist --no-isolation --outdir dist . >/dev/null
    ls dist/tapio-*.tar.gz
    flock -u 9
}

# dist/bundle/tapio-bundle-<version>-<python>-<platform>.tar.gz (or DIR/..., relative to the
# checkout), for hosts without network: the sdist, a wheel of every runtime dependency for this
# Python and platform, the BPF object, the systemd units and deploy/bundle/install.sh, which
# installs them into a venv with pip --no-index.
cmd_bundle() {
    local out=${1:-dist/bundle}
    cmd_build
    lock
    local version tag    # tag: this interpreter's wheel tags, "cp311 linux_x86_64"
    version=$("$PY" -c 'import tapio; print(tapio.__version__)')
    tag=$("$PY" -c 'import sys, sysconfig; print(f"cp{sys.version_info[0]}{sys.version_info[1]}", sysconfig.get_platform().replace("-", "_").replace(".", "_"))')
    local name="tapio-bundle-$version-${tag/ /-}"
    local stage="build/bundle/$name"
    rm -rf build/bundle
    mkdir -p "$stage/sdist" "$stage/wheels" "$stage/bpf" "$stage/systemd" "$out"
    # the sdist of cmd_sdist, made straight into the bundle: dist/ is left as it is
    "$PY" -m build --sdist --no-isolation --outdir "$stage/sdist" . >/dev/null
    cp "$BPF_OBJ" "$stage/bpf/"
    cp deploy/systemd/*.service "$stage/systemd/"
    cp deploy/bundle/install.sh "$stage/"
    cp requirements/runtime.txt "$stage/requirements.txt"
    # install.sh builds the sdist without build isolation: the venv needs the build backend
    grep -E '^(setuptools|wheel)\b' requirements/dev.txt >"$stage/build-requirements.txt"
    log "collecting wheels for ${tag/ / on }"
    "$PY" -m pip wheel -q --wheel-dir "$stage/wheels" -r "$stage/requirements.txt" -r "$stage/build-requirements.txt"
    printf 'version=%s\npython=%s\nplatform=%s\n' "$version" "${tag% *}" "${tag#* }" >"$stage/BUNDLE-INFO"
    (cd "$stage" && find . -type f ! -name SHA256SUMS -printf '%P\n' | sort | xargs sha256sum >SHA256SUMS)
    tar -C build/bundle -czf "$out/$name.tar.gz" "$name"
    flock -u 9
    ls "$out/$name.tar.gz"
}

# The images of deploy/Containerfile, built with no registry and no network: FROM a Debian base
# made here (deploy/podman/base-image.sh: mmdebstrap, then podman import; cached), with /opt/tapio
# installed from wheels this venv builds (tapio's own, same Python and libbpf as the base, and its
# runtime dependencies). Prints the image names.
#
#   ./build.sh image [collector] [server]      (both by default)
cmd_image() {
    local targets=("$@")
    [ ${#targets[@]} -eq 0 ] && targets=(collector server)
    for t in "${targets[@]}"; do
        [ "$t" = collector ] || [ "$t" = server ] || die "image: no target $t (collector, server)"
    done
    cmd_build
    apt_install "${APT_CONTAINERS[@]}"
    local base version ctx=build/image
    base=$(deploy/podman/base-image.sh)
    version=$("$PY" -c 'import tapio; print(tapio.__version__)')
    lock
    # the wheels are made again only when what goes into them has changed
    local stamp want
    stamp=$ctx/wheels.sha
    want=$(find tapio requirements/runtime.txt setup.py pyproject.toml -type f \
        \( -name '*.py' -o -name '*.so' -o -name '*.o' -o -name '*.pyi' -o -name '*.txt' -o -name '*.toml' \) \
        -not -path '*/__pycache__/*' | sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        rm -rf "$ctx"
        mkdir -p "$ctx/wheels"
        log "wheels of tapio and its runtime dependencies -> $ctx/wheels"
        # The wheel takes the extensions cmd_build compiled: copied where build_ext puts its output,
        # newer than their sources, it finds them up to date and does not compile them again.
        local lib
        lib=build/lib.$("$PY" -c 'import sys, sysconfig; print(f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}")')
        mkdir -p "$lib/tapio/_fast"
        cp -p tapio/_fast/*.so "$lib/tapio/_fast/"
        # fixed zip timestamps: the same checkout gives the same wheel, and podman's layer cache holds
        SOURCE_DATE_EPOCH=315532800 "$PY" -m pip wheel -q --no-deps --no-build-isolation --wheel-dir "$ctx/wheels" . >/dev/null
        "$PY" -m pip wheel -q --wheel-dir "$ctx/wheels" -r requirements/runtime.txt >/dev/null
        echo "$want" >"$stamp"
    fi
    for t in "${targets[@]}"; do
        log "podman build --target $t FROM $base"
        # runc: crun refuses hybrid cgroup hosts; explicit limits: podman's defaults raise them
        podman --runtime runc build --quiet --file deploy/Containerfile --target "$t" \
            --build-arg "PYTHON_IMAGE=$base" --build-arg INSTALL=wheels \
            --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 \
            --tag "localhost/tapio/$t:$version" "$ctx" >/dev/null
        echo "localhost/tapio/$t:$version"
    done
    flock -u 9
}

cmd_clean() {
    rm -rf build dist "$BPF_OBJ" tapio/_fast/*.c tapio/_fast/*.so tapio/_fast/*.html tapio/v1 ./*.egg-info
}

case "${1:-}" in
    deps|build|run|test|bench|fuzz|sdist|bundle|image|clean)
        step=$1
        shift
        "cmd_$step" "$@"
        ;;
    *)
        echo "usage: ./build.sh {deps|build|run|test|bench|fuzz|sdist|bundle|image|clean} [args]" >&2
        exit 2
        ;;
esac
