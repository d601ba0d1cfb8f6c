#!/usr/bin/env bash
# The one test command, for developers and CI alike:
#   bash tests/run.sh [pytest arguments...]
# Installs what is missing (system packages as root, then the project with its test extras, into
# the virtual environment it runs in — or else into .venv, made here if missing: Debian's and
# Ubuntu's system Python refuses pip installs), then runs every check and the tests with that
# environment's python. Exits non-zero if any step fails; pytest finding no test
# (its exit status 5) counts as a failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# ---- system prerequisites: "command:debian-package", one per line -----------------------------
SYSTEM_PREREQUISITES=(
    "mosquitto:mosquitto"  # the MQTT broker the transport tests start (tests/fixtures/mosquitto.py)
    "openssl:openssl"      # makes the self-signed certificate of the MQTT TLS test
    "podman:podman"        # the container engine behind the docker runtime's tests (its Docker API)
    "runc:runc"            # the OCI runtime the tests' containers.conf selects
    "catatonit:catatonit"  # the init process replicas run under (a podman recommendation only)
    "bwrap:bubblewrap"     # the sandbox closure replicas run in (proxy/sandbox.py)
    "chromium:chromium"    # the headless browser of the dashboard's page tests (Playwright drives it)
)

have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}

in_venv() {
    python3 -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'
}

missing=()
for entry in "${SYSTEM_PREREQUISITES[@]}"; do
    have "${entry%%:*}" || missing+=("${entry#*:}")
done
# making .venv needs ensurepip, which Debian and Ubuntu ship apart from python3
if ! in_venv && [ ! -x .venv/bin/python ] && ! python3 -c 'import ensurepip' 2>/dev/null; then
    missing+=("python3-venv")
fi
if ((${#missing[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "run.sh: missing ${missing[*]}; install as root: apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "== installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi

# ---- the Python environment: the active virtual environment, else .venv ----------------------
if in_venv; then
    python="$(command -v python3)"
else
    if [ ! -x .venv/bin/python ]; then
        echo "== python3 -m venv .venv"
        python3 -m venv .venv
    fi
    python="$PWD/.venv/bin/python"
fi

# ---- the project and its test tools ---------------------------------------------------------
echo "== $python -m pip install -e '.[test,clipper]' and clipper_admin 0.4.1 (--no-deps)"
"$python" -m pip install --quiet --disable-pip-version-check -e '.[test,clipper]'
"$python" -m pip install --quiet --disable-pip-version-check --no-deps 'clipper_admin==0.4.1'

# ---- checks: run them all, report every failure, fail at the end ----------------------------
failed=()
step() {
    echo "== $*"
    if ! "$@"; then
        failed+=("$*")
    fi
}

step "$python" -m ruff check .
step "$python" -m ruff format --check .
step "$python" -m mypy
# console scripts land beside this python (a version manager's shims may not know them yet)
scripts="$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
step "$scripts/lint-imports"

echo "== $python -m pytest $*"
pytest_status=0
PATH="$scripts:$PATH" "$python" -m pytest "$@" || pytest_status=$?
if [ "$pytest_status" -eq 5 ]; then
    failed+=("pytest (no tests ran)")
elif [ "$pytest_status" -ne 0 ]; then
    failed+=("pytest (exit status $pytest_status)")
fi

if ((${#failed[@]})); then
    printf 'FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "== all checks passed"
