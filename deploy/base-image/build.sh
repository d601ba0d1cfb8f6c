#!/usr/bin/env bash
# Build the modelbus base image from this machine's Python — no registry needed:
#   bash deploy/base-image/build.sh [--with PACKAGE ...]
# rootfs.py (beside this file) writes the build context; podman (or docker, or $ENGINE) builds it
# unless an image with the same content digest exists. Prints the tag and also tags it
# localhost/modelbus-base:latest. Use the Python your models are made with ($PYTHON, default
# python3): the image carries that interpreter and its packages. Model images then start
# `FROM localhost/modelbus-base:latest` and `COPY model.closure /model/model.closure`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
engine="${ENGINE:-$(command -v podman || command -v docker || true)}"
if [ -z "$engine" ]; then
    echo "build.sh: no container engine; apt-get install -y podman runc (or set ENGINE)" >&2
    exit 1
fi
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
tag="$("${PYTHON:-python3}" "$here/rootfs.py" "$context" "$@")"
if "$engine" image inspect "$tag" >/dev/null 2>&1; then
    echo "build.sh: $tag is built already" >&2
else
    "$engine" build --tag "$tag" "$context" >&2
fi
"$engine" tag "$tag" localhost/modelbus-base:latest
echo "$tag"
