#!/usr/bin/env bash
# livepeer-tx quick start: `./run.sh demo` or `./run.sh test`.
# Installs what is missing (FFmpeg from Debian, a virtualenv with the project and
# its test extras, anvil and solc from npm for the chain tests), then runs.
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || need_apt+=(ffmpeg)
command -v npm >/dev/null || need_apt+=(nodejs npm)
command -v curl >/dev/null || need_apt+=(curl)  # the tests' curl --http2 against the public port
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ "${1:-}" = test ]; then
    # tests/test_package.py builds, lints, installs and purges the Debian package.
    for pkg in build-essential debhelper dh-virtualenv dpkg-dev fakeroot lintian python3.11-venv adduser; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need_apt+=("$pkg")
    done
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Python caches compiled modules (and pytest its rewritten tests) in __pycache__
# unless told not to: the suite starts about fifty Python processes, and
# without the cache each one compiles the project's modules again.
unset PYTHONDONTWRITEBYTECODE

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# compat mode puts the project root on sys.path, so twistd finds twisted/plugins/.
# Installed again only when the project's metadata changed since the last install.
stamp=.venv/.livepeer-tx-installed
wanted=$(cat setup.cfg pyproject.toml 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    .venv/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat
    echo "$wanted" > "$stamp"
fi
# twistd finds its plugins through dropin.cache files that Twisted writes on
# first use: write them here when missing or older than a plugin, not from
# many nodes starting at once.
for plugins in twisted/plugins .venv/lib/python3*/site-packages/twisted/plugins; do
    if [ ! -e "$plugins/dropin.cache" ] || [ -n "$(find "$plugins" -maxdepth 1 -name '*.py' -newer "$plugins/dropin.cache")" ]; then
        .venv/bin/python -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
        break
    fi
done

case "${1:-}" in
    demo)
        shift
        exec .venv/bin/livepeer-tx demo "$@"
        ;;
    test)
        shift
        if [ ! -x node_modules/.bin/anvil ] || [ ! -e node_modules/solc ]; then
            npm install --no-audit --no-fund --loglevel=error
        fi
        # Everything but the Debian package test (marker `package`, minutes of
        # dpkg-buildpackage), on one worker more than there are cores (the
        # end-to-end tests spend part of their time waiting on their nodes);
        # `./run.sh test -m package` runs that one (a later -m wins).
        # --dist loadgroup keeps each xdist_group (the package test's build)
        # on one worker.
        exec .venv/bin/python -m pytest -q -n "$(( $(nproc) + 1 ))" --dist loadgroup -m "not package" "$@"
        ;;
    *)
        echo "usage: ./run.sh demo [livepeer-tx demo options, see --help] | ./run.sh test [pytest options]" >&2
        exit 2
        ;;
esac
