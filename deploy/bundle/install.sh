#!/usr/bin/env bash
# Installs Tapio from this bundle, with no network: a venv made with pip --no-index from the wheels
# in wheels/, Tapio itself built from sdist/ (its C core is compiled here, against this host's
# libbpf), then a report on whether this kernel can run tapio-collector.
#
#   ./install.sh [--prefix DIR] [--python PYTHON] [--systemd-dir DIR] [--reinstall] [--no-kernel-check]
#   ./install.sh --check-kernel
#
#   --prefix DIR        where to install (default /opt/tapio): DIR/<version> is the venv and
#                       DIR/current points to the version in use; DIR/current/bin holds
#                       tapio-collector and tapio-server. Older versions stay, for a roll back.
#   --python PYTHON     the venv's interpreter (default: python3.X, the bundle's version)
#   --systemd-dir DIR   also write tapio-collector.service and tapio-server.service into DIR
#                       (/etc/systemd/system, say), made to start DIR/current of --prefix
#   --reinstall         replace DIR/<version> when it is there already
#   --no-kernel-check   no kernel report (when building a container image, say)
#   --check-kernel      only the kernel report: install nothing
#
# The install needs gcc, the Python headers, the Python venv module, pkg-config and libbpf with
# its headers (Debian/Ubuntu: gcc python3-dev python3-venv pkg-config libbpf-dev).
#
# Exit codes:
#   0  installed, and this kernel can run tapio-collector (--check-kernel: the kernel can)
#   1  installed, but this kernel cannot run tapio-collector as it is: the report says why
#      (tapio-server runs anywhere)
#   2  bad usage
#   3  this host lacks something the install needs: the list says what (nothing was changed)
#   4  the bundle is damaged, or it was made for another Python or platform
#   5  pip failed, or the installed programs do not start (the half-made venv is removed)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

prefix=/opt/tapio
python=
systemd_dir=
reinstall=0
kernel_check=1
check_only=0

usage() {
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2
    exit 2
}

fail() {
    local code=$1
    shift
    printf 'install.sh: %s\n' "$*" >&2
    exit "$code"
}

need_value() {
    [ $# -ge 2 ] && [ -n "$2" ] || fail 2 "$1 needs a value (see --help)"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) need_value "$@"; prefix=$2; shift 2 ;;
        --prefix=*) prefix=${1#*=}; shift ;;
        --python) need_value "$@"; python=$2; shift 2 ;;
        --python=*) python=${1#*=}; shift ;;
        --systemd-dir) need_value "$@"; systemd_dir=$2; shift 2 ;;
        --systemd-dir=*) systemd_dir=${1#*=}; shift ;;
        --reinstall) reinstall=1; shift ;;
        --no-kernel-check) kernel_check=0; shift ;;
        --check-kernel) check_only=1; shift ;;
        -h|--help) usage ;;
        *) fail 2 "unknown argument $1 (see --help)" ;;
    esac
done

# The systemd units get this path as it is: keep it plain.
prefix=$(realpath -m -- "$prefix")
[[ "$prefix" =~ ^/[A-Za-z0-9._/-]+$ ]] || fail 2 "--prefix $prefix: use a path of letters, digits, '.', '_', '-' and '/'"

# ---------------------------------------------------------------------------------------------
# The kernel report

CAP_DAC_READ_SEARCH=2
CAP_SYS_PTRACE=19
CAP_SYS_ADMIN=21
CAP_SYS_RESOURCE=24
CAP_PERFMON=38
CAP_BPF=39

blockers=0

line() {
    printf '  %-5s %s\n' "$1" "$2"
    [ "$1" != FAIL ] || blockers=$((blockers + 1))
}

kernel_at_least() {   # kernel_at_least MAJOR MINOR, of the kernel_report being made
    [ "$kmajor" -gt "$1" ] || { [ "$kmajor" -eq "$1" ] && [ "$kminor" -ge "$2" ]; }
}

kernel_report() {
    local release version kmajor kminor caps last_cap lockdown fstype tracefs
    release=$(uname -r)
    version=${release%%[!0-9.]*}
    kmajor=${version%%.*}
    kminor=${version#*.}
    kminor=${kminor%%.*}
    caps=$((16#$(awk '/^CapEff:/ { print $2 }' /proc/self/status)))
    last_cap=$(cat /proc/sys/kernel/cap_last_cap 2>/dev/null || echo 0)
    has_cap() { [ $(((caps >> $1) & 1)) -eq 1 ]; }

    echo "Kernel check: what tapio-collector needs (tapio-server needs none of it)"
    if kernel_at_least 5 8; then
        line ok "Linux $release (>= 5.8: BPF ring buffer, BTF tracepoints)"
    else
        line FAIL "Linux $release: the collector needs Linux >= 5.8 (BPF ring buffer, BTF tracepoints)"
    fi

    if [ -r /sys/kernel/btf/vmlinux ]; then
        line ok "BTF at /sys/kernel/btf/vmlinux"
    elif [ -e /sys/kernel/btf/vmlinux ]; then
        line warn "/sys/kernel/btf/vmlinux is not readable from this shell (the collector runs as root or with CAP_DAC_READ_SEARCH)"
    else
        line FAIL "no /sys/kernel/btf/vmlinux: the kernel needs CONFIG_DEBUG_INFO_BTF=y (most distribution kernels >= 5.8 have it)"
    fi

    lockdown=$(cat /sys/kernel/security/lockdown 2>/dev/null || true)
    case "$lockdown" in
        *"[confidentiality]"*)
            line FAIL "kernel lockdown is 'confidentiality': BPF programs may not read kernel memory (boot with lockdown=integrity or none)" ;;
        *"[integrity]"*) line ok "kernel lockdown: integrity (BPF tracing allowed)" ;;
        *) line ok "kernel lockdown: none" ;;
    esac

    fstype=$(stat -fc %T /sys/fs/cgroup 2>/dev/null || true)
    if [ "$fstype" = cgroup2fs ]; then
        line ok "cgroup v2 at /sys/fs/cgroup"
    elif [ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null || true)" = cgroup2fs ]; then
        line warn "hybrid cgroups (v1, and v2 at /sys/fs/cgroup/unified): container, pod and unit come from the v2 tree only; with systemd.unified_cgroup_hierarchy=1 every process has them"
    else
        line warn "no cgroup v2: events carry no container, pod or systemd unit"
    fi

    tracefs=$(awk '$3 == "tracefs" { print $2; exit }' /proc/self/mounts)
    if [ -n "$tracefs" ]; then
        line ok "tracefs at $tracefs"
    elif has_cap $CAP_SYS_ADMIN; then
        line ok "tracefs is not mounted: the collector mounts it at /sys/kernel/tracing when it starts as root"
    else
        line warn "tracefs is not mounted and this shell cannot mount it: TCP accept events need it (mount -t tracefs nodev /sys/kernel/tracing)"
    fi

    if kernel_at_least 6 8; then
        line ok "OOM kill events (oom:mark_victim passes the task: Linux >= 6.8)"
    else
        line info "no OOM kill events on this kernel: they need Linux >= 6.8 (oom:mark_victim with the task)"
    fi

    if ! kernel_at_least 5 11; then
        line info "BPF maps count against RLIMIT_MEMLOCK on this kernel (< 5.11): the collector raises it with CAP_SYS_RESOURCE; the systemd unit sets LimitMEMLOCK=infinity"
    fi

    if [ "$last_cap" -lt $CAP_BPF ]; then
        line info "this kernel has no CAP_BPF/CAP_PERFMON: run the collector as root (Kubernetes: deploy/kubernetes/privileged)"
    fi
    if has_cap $CAP_BPF && has_cap $CAP_PERFMON || has_cap $CAP_SYS_ADMIN; then
        line ok "this shell (uid $(id -u)) may load and attach BPF programs"
    else
        line warn "this shell (uid $(id -u)) has neither CAP_BPF+CAP_PERFMON nor CAP_SYS_ADMIN: start tapio-collector as root, or with tapio-collector.service, which grants them"
    fi
    if has_cap $CAP_BPF || has_cap $CAP_SYS_ADMIN; then
        has_cap $CAP_DAC_READ_SEARCH ||
            line info "without CAP_DAC_READ_SEARCH, cgroup ids resolve by walking /sys/fs/cgroup (slower, misses short-lived cgroups)"
        has_cap $CAP_SYS_PTRACE ||
            line info "without CAP_SYS_PTRACE, other users' processes have no executable path"
        has_cap $CAP_SYS_RESOURCE || kernel_at_least 5 11 ||
            line warn "without CAP_SYS_RESOURCE, the BPF maps may not fit in RLIMIT_MEMLOCK ($(ulimit -l))"
    fi

    if [ -x "$prefix/current/bin/python" ]; then
        if "$prefix/current/bin/python" -c 'import tapio._fast.kernel' 2>/dev/null; then
            line ok "the compiled core in $prefix/current loads with this host's libbpf"
        else
            line FAIL "the compiled core in $prefix/current does not load: $("$prefix/current/bin/python" -c 'import tapio._fast.kernel' 2>&1 | tail -1)"
        fi
    fi

    if [ "$blockers" -eq 0 ]; then
        echo "This kernel can run tapio-collector."
    else
        echo "This kernel cannot run tapio-collector as it is: $blockers problem(s) marked FAIL above."
    fi
    [ "$blockers" -eq 0 ]
}

if [ "$check_only" = 1 ]; then
    kernel_report && exit 0 || exit 1
fi

# ---------------------------------------------------------------------------------------------
# The bundle, and what the install needs from this host

[ -f "$HERE/BUNDLE-INFO" ] && [ -f "$HERE/SHA256SUMS" ] ||
    fail 4 "$HERE is not a whole Tapio bundle (BUNDLE-INFO or SHA256SUMS is missing): unpack it again"
(cd "$HERE" && sha256sum --quiet --strict -c SHA256SUMS >&2) ||
    fail 4 "the bundle is damaged (the files above do not match SHA256SUMS): copy it again"

info() { sed -n "s/^$1=//p" "$HERE/BUNDLE-INFO"; }
version=$(info version)
bundle_python=$(info python)     # cp311
bundle_platform=$(info platform) # linux_x86_64
sdist="$HERE/sdist/tapio-$version.tar.gz"

if [ -z "$python" ]; then
    python="python${bundle_python:2:1}.${bundle_python:3}"
    command -v "$python" >/dev/null || python=python3
fi
command -v "$python" >/dev/null ||
    fail 3 "no $python here: this bundle needs Python ${bundle_python:2:1}.${bundle_python:3} (pass --python PATH)"
host=$("$python" -c 'import sys, sysconfig
print(f"cp{sys.version_info[0]}{sys.version_info[1]}", sysconfig.get_platform().replace("-", "_").replace(".", "_"))')
[ "$host" = "$bundle_python $bundle_platform" ] ||
    fail 4 "this bundle is for $bundle_python on $bundle_platform, but $python is ${host% *} on ${host#* }: make the bundle (./build.sh bundle) on a host with that Python, or pass --python"

missing=()
"$python" -c 'import venv, ensurepip' 2>/dev/null ||
    missing+=("the Python venv module (Debian/Ubuntu: python3-venv)")
py_include=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[ -f "$py_include/Python.h" ] ||
    missing+=("the Python headers, $py_include/Python.h (Debian/Ubuntu: python3-dev; Fedora/RHEL: python3-devel)")
cc=$("$python" -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "cc").split()[0])')
command -v "$cc" >/dev/null ||
    missing+=("a C compiler, $cc (Debian/Ubuntu and Fedora/RHEL: gcc)")
if ! command -v pkg-config >/dev/null; then
    missing+=("pkg-config (Debian/Ubuntu: pkg-config; Fedora/RHEL: pkgconf-pkg-config)")
elif ! pkg-config --exists libbpf; then
    missing+=("libbpf with its headers (Debian/Ubuntu: libbpf-dev; Fedora/RHEL: libbpf-devel)")
fi
if [ ${#missing[@]} -eq 0 ]; then
    # what the build does, in small: the headers it includes, the library it links
    probe=$(mktemp -d)
    printf '#include <Python.h>\n#include <linux/types.h>\n#include <bpf/libbpf.h>\n#include <bpf/btf.h>\nint tapio_probe(void) { return ring_buffer__epoll_fd((void *)0); }\n' >"$probe/probe.c"
    # shellcheck disable=SC2046
    if ! "$cc" -shared -fPIC -I"$py_include" $(pkg-config --cflags libbpf) "$probe/probe.c" \
        -o "$probe/probe.so" $(pkg-config --libs libbpf) 2>"$probe/errors"; then
        missing+=("a working build against libbpf and Python.h; $cc said: $(head -3 "$probe/errors" | tr '\n' ' ')")
    fi
    rm -rf "$probe"
fi
if [ ${#missing[@]} -gt 0 ]; then
    {
        echo "install.sh: this host lacks what the install needs; nothing was changed. Missing:"
        printf '  - %s\n' "${missing[@]}"
    } >&2
    exit 3
fi

# ---------------------------------------------------------------------------------------------
# The install

target="$prefix/$version"
if [ -e "$target" ]; then
    [ "$reinstall" = 1 ] || fail 2 "$target is there already (tapio $version is installed): --reinstall replaces it"
    rm -rf "$target"
fi
mkdir -p "$prefix"

abort() {
    rm -rf "$target"
    fail 5 "$* ($target was removed again)"
}

# Only the bundle's files: no index, and no pip configuration of this host (its find-links or
# constraints) mixed in.
bundle_pip() {
    PIP_CONFIG_FILE=/dev/null "$target/bin/python" -m pip --isolated --disable-pip-version-check \
        --no-input "$@"
}

echo "Installing tapio $version into $target"
"$python" -m venv "$target" || abort "$python -m venv failed"
bundle_pip install -q --no-index --find-links "$HERE/wheels" -r "$HERE/requirements.txt" \
    -r "$HERE/build-requirements.txt" || abort "pip could not install the dependencies from wheels/"
echo "Compiling Tapio's core against this host's libbpf (a minute or two)"
bundle_pip install -q --no-index --find-links "$HERE/wheels" --no-build-isolation "$sdist" ||
    abort "pip could not build $sdist"
bundle_pip check >&2 || abort "the installed packages do not fit together"
for program in tapio-collector tapio-server; do
    "$target/bin/$program" --version || abort "$target/bin/$program does not start"
done

previous=$(readlink "$prefix/current" 2>/dev/null || true)
ln -sfn "$version" "$prefix/.current.new"
mv -Tf "$prefix/.current.new" "$prefix/current"
echo "$prefix/current -> $version"

if [ -n "$systemd_dir" ]; then
    mkdir -p "$systemd_dir"
    for unit in "$HERE"/systemd/*.service; do
        sed "s|/opt/tapio/|$prefix/|g" "$unit" >"$systemd_dir/$(basename "$unit")"
        echo "wrote $systemd_dir/$(basename "$unit")"
    done
fi

echo
if [ -n "$previous" ] && [ "$previous" != "$version" ]; then
    echo "Upgraded from $previous: systemctl restart tapio-server tapio-collector (those that run here)"
    echo "Roll back: ln -sfn $previous $prefix/current, then the same restart"
elif [ -n "$systemd_dir" ]; then
    echo "Next: systemctl daemon-reload, then systemctl enable --now tapio-server (where the server"
    echo "runs; settings in /etc/tapio/server.env) and tapio-collector (on every host; settings in"
    echo "/etc/tapio/collector.env)."
else
    echo "Next: $prefix/current/bin/tapio-server and $prefix/current/bin/tapio-collector (--help), or"
    echo "run this again with --reinstall --systemd-dir /etc/systemd/system for the systemd units."
fi
echo

if [ "$kernel_check" = 1 ]; then
    kernel_report || exit 1
fi
exit 0
