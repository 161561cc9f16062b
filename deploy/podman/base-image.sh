#!/usr/bin/env bash
# A Debian base image made on this host with no image registry: mmdebstrap (Debian's package
# mirror) -> podman import. Prints the image's name, building it first when it is missing.
#
#   deploy/podman/base-image.sh         localhost/tapio-base:<hash>
#
# The name's hash covers what goes in (suite, variant, packages): change the list and a new image
# is made. Cached twice: the tarball under $TAPIO_IMAGE_CACHE (default /var/tmp/tapio-containers,
# it survives a `podman system reset`) and the image in podman's storage. The packages are what
# the collector's image needs at run time (Python, its venv module, libbpf, libelf); the test
# workloads use the same image.
set -euo pipefail

SUITE=bookworm
VARIANT=essential
PACKAGES=python3,python3-venv,libbpf1,libelf1
cache=${TAPIO_IMAGE_CACHE:-/var/tmp/tapio-containers}

key=$(printf '%s\n' 1 "$SUITE" "$VARIANT" "$PACKAGES" | sha256sum | cut -c1-12)
tag=localhost/tapio-base:$key

if podman image exists "$tag"; then
    echo "$tag"
    exit 0
fi
for tool in podman mmdebstrap; do
    command -v "$tool" >/dev/null || { echo "base-image.sh: needs $tool (Debian: apt-get install $tool)" >&2; exit 3; }
done
mkdir -p "$cache"
# concurrent callers (two test sessions, a build next to a test run) wait for one build
exec 9>"$cache/base-$key.lock"
flock 9
if ! podman image exists "$tag"; then
    tar=$cache/base-$key.tar
    if [ ! -f "$tar" ] || [ ! -s "$tar" ]; then
        echo "base-image.sh: mmdebstrap $SUITE ($PACKAGES) -> $tar" >&2
        # a directory where the tarball belongs is what an older version of this script left
        rm -rf "$tar" "$tar.part"
        # --format: mmdebstrap tells the format by the target's name, and "*.part" is none it
        # knows (it would make a directory)
        mmdebstrap --quiet --format=tar --variant="$VARIANT" --include="$PACKAGES" "$SUITE" "$tar.part" >&2
        mv "$tar.part" "$tar"
    fi
    podman import --quiet "$tar" "$tag" >/dev/null
fi
echo "$tag"
