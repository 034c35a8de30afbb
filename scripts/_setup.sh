# Sourced by scripts/demo and scripts/test: find Python 3.11+, create or reuse .venv, and
# (re)install the project when pyproject.toml changed since the last install. EXTRAS (set by the
# caller) names the optional dependencies to add: scripts/test sets "dev,ray" (pytest, ruff,
# mypy; Ray for the cluster backend's tests);
# scripts/demo installs only what the daemon needs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11 python; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; raise SystemExit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

if ! .venv/bin/python -c 'import sys; raise SystemExit(sys.version_info < (3, 11))' 2>/dev/null; then
    PY="$(find_python)" || { echo "error: Python 3.11 or newer is needed; install it and retry" >&2; exit 1; }
    echo "setting up .venv with $($PY --version)" >&2
    rm -rf .venv
    "$PY" -m venv .venv
fi

EXTRAS="${EXTRAS:-}"
WANT="$(sha256sum < pyproject.toml | cut -d' ' -f1)"
# One stamp per set of extras, holding the pyproject.toml hash it was installed from; the dev
# install holds everything the plain one does.
installed() {
    local extras
    for extras in "$@"; do
        [ "$(cat ".venv/.mlmaster-installed${extras:+-$extras}" 2>/dev/null)" = "$WANT" ] && return 0
    done
    return 1
}
if [ -n "$EXTRAS" ]; then satisfied=("$EXTRAS"); else satisfied=("" dev "dev,ray"); fi
if ! installed "${satisfied[@]}" || ! .venv/bin/python -c 'import mlmaster_daemon' 2>/dev/null; then
    what="mlmaster-daemon and what it needs"
    [ -n "$EXTRAS" ] && what="$what, with [$EXTRAS]"
    echo "installing $what into .venv (the first run takes a few minutes; each package is listed as it comes)" >&2
    LOG=.venv/install.log
    target="."
    [ -n "$EXTRAS" ] && target=".[$EXTRAS]"
    set +e
    { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install --progress-bar off -e "$target"; } 2>&1 \
        | tee "$LOG" | grep --line-buffered -E '^(Collecting|Installing collected|Successfully installed)' \
        | sed -u -e 's/^Collecting /  fetching /' -e 's/^Installing collected packages: .*/  installing them/' \
              -e 's/^Successfully installed .*/  installed/' >&2
    status=("${PIPESTATUS[@]}")
    set -e
    if [ "${status[0]}" != 0 ]; then
        tail -n 40 "$LOG" >&2
        echo "error: installing the project failed; the full log is $ROOT/$LOG" >&2
        exit 1
    fi
    echo "$WANT" > ".venv/.mlmaster-installed${EXTRAS:+-$EXTRAS}"
fi

# The sandbox for generated code. Installed when we can (root with apt); without it jobs run
# unsandboxed and the daemon says so.
if ! command -v bwrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing bubblewrap (the sandbox for generated code)" >&2
    if ! { apt-get install -y -q bubblewrap >/dev/null 2>&1 \
           || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1; }; }; then
        echo "warning: could not install bubblewrap; node scripts will run without the sandbox" >&2
    fi
fi
