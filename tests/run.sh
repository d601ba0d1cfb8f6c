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
    "bwrap:bubblewrap"     # the sandbox closure replicas run in (proxy/backend/sandbox.py)
    "chromium:chromium"    # the headless browser of the dashboard's page tests (Playwright drives it)
    "initdb:postgresql"    # the registry's PostgreSQL server the tests start (tests/fixtures/postgres.py)
)

have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ] ||
        compgen -G "/usr/lib/postgresql/*/bin/$1" >/dev/null
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

# ---- MLServer, the Open Inference Protocol server the V2 backend's tests run against -----------
# In its own virtualenv: it pins many packages. 1.7.1 crashes its worker at start with the
# newest uvloop and exits 0 (../shared/MEASURED.md), hence uvloop 0.21.0 beside it. The tests
# and `modelbus bench remote` find it through MODELBUS_MLSERVER; a failure here fails the run.
if [ -z "${MODELBUS_MLSERVER:-}" ]; then
    if [ ! -x .venv-mlserver/bin/mlserver ]; then
        echo "== creating .venv-mlserver (mlserver 1.7.1, uvloop 0.21.0)"
        python3 -m venv .venv-mlserver
        .venv-mlserver/bin/pip install --quiet --disable-pip-version-check \
            'mlserver==1.7.1' 'uvloop==0.21.0'
    fi
    MODELBUS_MLSERVER="$(pwd)/.venv-mlserver/bin/mlserver"
    export MODELBUS_MLSERVER
fi

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
