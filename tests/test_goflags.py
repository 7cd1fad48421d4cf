"""
go-livepeer's command lines, C{LP_*} variables and C{-config} files, as both
daemons' options take them (L{livepeer_tx.goflags}), in memory.
"""

import os

import pytest
from twisted.python import usage

from livepeer_tx import __version__
from livepeer_tx.goflags import GO_LIVEPEER_FLAGS, envName, parseGoBool, readConfigFile
from livepeer_tx.orchestrator import tap as orchestratorTap
from livepeer_tx.transcoder import tap as transcoderTap

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def writeFile(path, text, mode=0o600):
    """
    Write C{text} to C{path} with C{mode}; return the path as a string.
    """
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


@pytest.fixture
def secret(tmp_path):
    """
    A secret file, mode 600.
    """
    return writeFile(tmp_path / "orchSecret", "a-shared-secret-of-some-length\n")


def orchestratorOptions(tmp_path, argv, environ=None):
    """
    Parse C{argv} as C{livepeer-orchestrator}'s options with C{environ}
    (default: none) and a data directory under C{tmp_path}.
    """
    options = orchestratorTap.Options(environ=environ or {})
    if not any(a.lstrip("-").partition("=")[0] in ("dataDir", "datadir") for a in argv):
        argv = ["--dataDir", str(tmp_path / "data")] + argv
    options.parseOptions(argv)
    return options


def transcoderOptions(argv, environ=None):
    """
    Parse C{argv} as C{livepeer-transcoder}'s options with C{environ}.
    """
    options = transcoderTap.Options(environ=environ or {})
    options.parseOptions(argv)
    return options


def test_goBooleans():
    """
    Go's C{strconv.ParseBool} spellings, and nothing else.
    """
    for text in ("1", "t", "T", "TRUE", "true", "True"):
        assert parseGoBool(text) is True
    for text in ("0", "f", "F", "FALSE", "false", "False"):
        assert parseGoBool(text) is False
    for text in ("yes", "on", "", "tRuE", "2"):
        with pytest.raises(ValueError):
            parseGoBool(text)


def test_envNames():
    """
    ff's names: C{LP_} and the flag upper-cased.
    """
    assert envName("orchSecret") == "LP_ORCHSECRET"
    assert envName("maxSessions") == "LP_MAXSESSIONS"
    assert envName("a-b.c/d") == "LP_A_B_C_D"


@pytest.mark.parametrize("argv", [
    ["-orchSecret", "{secret}", "-maxSessions", "4", "-monitor", "-cliAddr=127.0.0.1:7000"],
    ["--orchSecret", "{secret}", "--maxSessions=4", "--monitor=true", "--cliAddr", "127.0.0.1:7000"],
    ["-orchSecret={secret}", "-monitor", "true", "--maxSessions", "4", "-cliAddr", "127.0.0.1:7000"],
])
def test_singleAndDoubleDashes(tmp_path, secret, argv):
    """
    One or two dashes, C{=} or a separate value: the same options.
    """
    options = orchestratorOptions(tmp_path, [a.replace("{secret}", secret) for a in argv])
    assert options["orchSecret"] == secret
    assert options["maxSessionsLimit"] == 4
    assert options["monitor"]
    assert (options["cliHost"], options["cliPort"]) == ("127.0.0.1", 7000)


@pytest.mark.parametrize("argv, expected", [
    ([], False),
    (["-monitor"], True),
    (["-monitor=true"], True),
    (["-monitor=1"], True),
    (["--monitor", "T"], True),
    (["-monitor=false"], False),
    (["-monitor=0"], False),
    (["--monitor", "false"], False),
    (["-monitor", "-monitor=false"], False),
])
def test_booleanFlagSpellings(tmp_path, secret, argv, expected):
    """
    A boolean flag alone means true; C{=value} and a following boolean word
    set it either way; the last one wins.
    """
    assert bool(orchestratorOptions(tmp_path, ["-orchSecret", secret] + argv)["monitor"]) is expected


def test_booleanFlagRefusesOtherWords(tmp_path, secret):
    """
    A boolean given a value that is no Go boolean is refused, naming the flag.
    """
    with pytest.raises(usage.UsageError, match=r"-monitor \(command line\): 'yes' is not a boolean"):
        orchestratorOptions(tmp_path, ["-orchSecret", secret, "-monitor=yes"])
    with pytest.raises(usage.UsageError, match="unexpected argument 'yes'"):
        orchestratorOptions(tmp_path, ["-orchSecret", secret, "-monitor", "yes"])


@pytest.mark.parametrize("argv, environ, expected", [
    ([], {}, "auto"),
    (["-reward"], {}, "on"),
    (["-reward=true"], {}, "on"),
    (["--reward", "true"], {}, "on"),
    (["-reward=false"], {}, "off"),
    (["--reward", "0"], {}, "off"),
    (["--reward", "auto"], {}, "auto"),
    (["--reward=off"], {}, "off"),
    ([], {"LP_REWARD": "false"}, "off"),
    (["-reward"], {"LP_REWARD": "false"}, "on"),
])
def test_rewardTakesGoBooleans(tmp_path, secret, argv, environ, expected):
    """
    go-livepeer's C{-reward} is a boolean whose absence means auto; here it
    is C{on}/C{off}/C{auto}, and the Go spellings map onto it.
    """
    assert orchestratorOptions(tmp_path, ["-orchSecret", secret] + argv, environ)["reward"] == expected


def test_environmentVariables(tmp_path, secret):
    """
    C{LP_<FLAG>} sets an option; an empty one or one naming no option is
    ignored.
    """
    environ = {"LP_ORCHSECRET": secret, "LP_MAXSESSIONS": "7", "LP_MONITOR": "true", "LP_CLIADDR": "",
               "LP_SOMETHING_ELSE": "x", "PATH": "/bin"}
    options = orchestratorOptions(tmp_path, [], environ)
    assert options["orchSecret"] == secret
    assert options["maxSessionsLimit"] == 7
    assert options["monitor"]
    assert options["cliAddr"] == orchestratorTap.DEFAULT_CLI_ADDR
    assert options.sources["maxSessions"] == "environment variable LP_MAXSESSIONS"


def test_precedenceCommandLineOverEnvironmentOverFile(tmp_path, secret):
    """
    Each option comes from the command line if it is there, else from the
    environment, else from the file.
    """
    config = writeFile(tmp_path / "o.conf", "\n".join([
        f"orchSecret {secret}", "maxSessions 3", "maxSegmentSize 1000", "cliAddr 127.0.0.1:7001",
        "transcoderPingInterval 5", "",
    ]))
    environ = {"LP_MAXSESSIONS": "4", "LP_CLIADDR": "127.0.0.1:7002", "LP_CONFIG": config}
    options = orchestratorOptions(tmp_path, ["-cliAddr", "127.0.0.1:7003", "-transcoderPingInterval=6"], environ)
    assert options["maxSegmentBytes"] == 1000
    assert options["maxSessionsLimit"] == 4
    assert options["cliPort"] == 7003
    assert options["pingSeconds"] == 6
    assert options.sources["maxSegmentSize"] == f"{config} line 3"
    assert options.sources["maxSessions"] == "environment variable LP_MAXSESSIONS"
    assert options.sources["cliAddr"] == "command line"


def test_commandLineConfigOverridesLpConfig(tmp_path, secret):
    """
    C{-config} on the command line names the file even when C{LP_CONFIG} is
    set, as for any other option.
    """
    chosen = writeFile(tmp_path / "chosen.conf", f"orchSecret {secret}\nmaxSessions 9\n")
    other = writeFile(tmp_path / "other.conf", f"orchSecret {secret}\nmaxSessions 2\n")
    options = orchestratorOptions(tmp_path, ["-config", chosen], {"LP_CONFIG": other})
    assert options["maxSessionsLimit"] == 9
    assert options["config"] == chosen


def test_configFileSyntax(tmp_path):
    """
    ff's plain format: blank lines and C{#} lines skipped, the value is the
    rest of the line up to a C{ #}, a flag alone is C{true}, leading dashes
    are ignored.
    """
    path = writeFile(tmp_path / "c.conf", "\n".join([
        "# a comment",
        "   ",
        "orchSecret  a value with spaces  ",
        "monitor",
        "-cliAddr\t127.0.0.1:7935 # inline comment",
        "pricePerUnit 0#not-a-comment",
        "  # indented comment",
    ]))
    assert readConfigFile(path) == [
        ("orchSecret", "a value with spaces", 3),
        ("monitor", "true", 4),
        ("cliAddr", "127.0.0.1:7935", 5),
        ("pricePerUnit", "0#not-a-comment", 6),
    ]


def test_configFileBooleansAndLpNames(tmp_path, secret):
    """
    In a file, a boolean takes Go's words or stands alone, and an option may
    be named by its C{LP_} variable, as ff allows.
    """
    config = writeFile(tmp_path / "o.conf", f"LP_ORCHSECRET {secret}\nmonitor false\ninitializeRound\n")
    options = orchestratorOptions(tmp_path, ["--config", config])
    assert options["orchSecret"] == secret
    assert not options["monitor"]
    assert options["initializeRound"]


def test_configFileErrorsNameFileAndLine(tmp_path, secret):
    """
    An unknown line, a bad boolean, a missing file: refused, naming the file,
    the line and the option.
    """
    unknown = writeFile(tmp_path / "u.conf", f"orchSecret {secret}\n\nmaxSesions 4\n")
    with pytest.raises(usage.UsageError, match=rf"unknown option -maxSesions \({unknown} line 3\)"):
        orchestratorOptions(tmp_path, ["-config", unknown])
    badBool = writeFile(tmp_path / "b.conf", f"orchSecret {secret}\nmonitor maybe\n")
    with pytest.raises(usage.UsageError, match=rf"-monitor \({badBool} line 2\): 'maybe' is not a boolean"):
        orchestratorOptions(tmp_path, ["-config", badBool])
    with pytest.raises(usage.UsageError, match="--config .*missing.conf: cannot read it: No such file"):
        orchestratorOptions(tmp_path, ["-config", str(tmp_path / "missing.conf")])
    nested = writeFile(tmp_path / "n.conf", "config /etc/other.conf\n")
    with pytest.raises(usage.UsageError, match="cannot name another one"):
        orchestratorOptions(tmp_path, ["-config", nested])


def test_unsupportedGoLivepeerOptionsAreNamed(tmp_path, secret):
    """
    A go-livepeer flag with no equivalent is refused as such, wherever it
    comes from; a name go-livepeer does not know either is called unknown.
    """
    with pytest.raises(usage.UsageError, match=r"-netint \(command line\) is a go-livepeer option with no "
                                               r"equivalent in livepeer-orchestrator: transcoding runs in"):
        orchestratorOptions(tmp_path, ["-orchSecret", secret, "-netint", "x"])
    with pytest.raises(usage.UsageError, match=r"-ethOrchAddr \(environment variable LP_ETHORCHADDR\) is a "
                                               r"go-livepeer option"):
        orchestratorOptions(tmp_path, ["-orchSecret", secret], {"LP_ETHORCHADDR": "0x00"})
    with pytest.raises(usage.UsageError, match=r"-authWebhookUrl \(.*line 1\) is a go-livepeer option with no "
                                               r"equivalent in livepeer-transcoder$"):
        transcoderOptions(["-config", writeFile(tmp_path / "t.conf", "authWebhookUrl http://x\n")])
    with pytest.raises(usage.UsageError, match=r"unknown option -orchSecrt \(command line\); see --help"):
        orchestratorOptions(tmp_path, ["-orchSecrt", secret])
    assert "orchSecrt" not in GO_LIVEPEER_FLAGS


@pytest.mark.parametrize("argv, message", [
    (["-transcoder"], "-transcoder=true .*orchestrator-and-transcoder mode has no equivalent"),
    (["-orchestrator=false"], "always runs as an orchestrator"),
    (["-gateway"], "-gateway=true .*gateway role is not part of livepeer-tx"),
    (["-broadcaster=1"], "-broadcaster=true"),
    (["-redeemer"], "ticket redemption service"),
    (["-autoAdjustPrice"], "does not adjust -pricePerUnit"),
    (["-startupAvailabilityCheck=true"], "does not call itself"),
])
def test_orchestratorRoleFlags(tmp_path, secret, argv, message):
    """
    Role flags are accepted when they describe this daemon and refused,
    saying why, when they ask for another role.
    """
    with pytest.raises(usage.UsageError, match=message):
        orchestratorOptions(tmp_path, ["-orchSecret", secret] + argv)


def test_orchestratorAcceptsItsOwnRole(tmp_path, secret):
    """
    C{-orchestrator}, C{-transcoder=false}, C{-gateway=false}: fine.
    """
    options = orchestratorOptions(tmp_path, ["-orchestrator", "-transcoder=false", "-gateway=false",
                                             "-autoAdjustPrice=false", "-orchSecret", secret])
    assert options["orchSecret"] == secret


def test_transcoderRoleFlags(secret):
    """
    The transcoder takes C{-transcoder} and C{-testTranscoder}, refuses
    C{-orchestrator} and turning its hardware test off.
    """
    base = ["-orchAddr", "o.example", "-orchSecret", secret]
    assert transcoderOptions(["-transcoder", "-testTranscoder=true"] + base)["orchHost"] == "o.example"
    with pytest.raises(usage.UsageError, match="-orchestrator=true .*run livepeer-orchestrator"):
        transcoderOptions(["-orchestrator"] + base)
    with pytest.raises(usage.UsageError, match="-testTranscoder=false .*always tests its hardware"):
        transcoderOptions(["-testTranscoder=false"] + base)
    with pytest.raises(usage.UsageError, match="-transcoder=false .*always runs as a standalone transcoder"):
        transcoderOptions(["-transcoder=false"] + base)


def test_transcoderRefusesEthereumOptionsFromFile(tmp_path, secret):
    """
    The Ethereum options stay refused on a transcoder from a file too.
    """
    config = writeFile(tmp_path / "t.conf", f"orchAddr o.example\norchSecret {secret}\nethUrl http://x\n")
    with pytest.raises(usage.UsageError, match="belong on the orchestrator"):
        transcoderOptions(["-config", config])


def test_datadirAliasAndVerbosity(tmp_path, secret):
    """
    go-livepeer's deprecated C{-datadir} is C{--dataDir}; C{-v} is the log
    verbosity and must be a number.
    """
    options = orchestratorOptions(tmp_path, ["-orchSecret", secret, "-datadir", str(tmp_path / "dd"), "-v", "6"])
    assert options["dataDir"] == str(tmp_path / "dd")
    assert options["verbosityLevel"] == 6
    assert orchestratorOptions(tmp_path, ["-orchSecret", secret], {"LP_V": "5"})["verbosityLevel"] == 5
    fromEnvironment = transcoderOptions(["-orchAddr", "o", "-orchSecret", secret], {"LP_DATADIR": "/srv/t"})
    assert fromEnvironment["dataDir"] == "/srv/t"
    assert orchestratorOptions(tmp_path, ["-orchSecret", secret])["verbosityLevel"] == 3
    with pytest.raises(usage.UsageError, match="-v must be a whole number"):
        orchestratorOptions(tmp_path, ["-orchSecret", secret, "-v", "loud"])


def test_commandLineErrors(tmp_path, secret):
    """
    A value missing at the end, a positional argument: clear refusals.
    """
    with pytest.raises(usage.UsageError, match="option -maxSessions needs a value"):
        orchestratorOptions(tmp_path, ["-orchSecret", secret, "-maxSessions"])
    with pytest.raises(usage.UsageError, match="unexpected argument 'extra': livepeer-orchestrator takes only"):
        orchestratorOptions(tmp_path, ["-orchSecret", secret, "extra"])
    with pytest.raises(usage.UsageError, match="unexpected argument 'x'"):
        orchestratorOptions(tmp_path, ["-orchSecret", secret, "--", "x"])


@pytest.mark.parametrize("tap", [orchestratorTap, transcoderTap])
@pytest.mark.parametrize("flag", ["--version", "-version"])
def test_versionPrintsLivepeerTxVersion(tap, flag, capsys):
    """
    C{--version} prints livepeer-tx's version and exits, before any check
    (and before a config file is read).
    """
    with pytest.raises(SystemExit) as exited:
        tap.Options(environ={"LP_CONFIG": "/nonexistent"}).parseOptions(["-maxSessions", "x", flag])
    assert exited.value.code == 0
    assert capsys.readouterr().out.splitlines()[0] == f"livepeer-tx {__version__}"


@pytest.mark.parametrize("flag", ["-h", "-help", "--help"])
def test_help(flag, capsys):
    """
    go-livepeer's C{-h} and C{-help} print the usage, listing C{--config}.
    """
    with pytest.raises(SystemExit):
        transcoderTap.Options(environ={}).parseOptions([flag])
    out = capsys.readouterr().out
    assert "--config=" in out and "--orchSecret=" in out


def samplePaths(tmp_path, text, secret):
    """
    A sample config's text with its host paths moved under C{tmp_path} (the
    secret and password files exist there, mode 600).
    """
    password = writeFile(tmp_path / "eth-password", "a keystore password\n")
    return (text.replace("/etc/livepeer/orchSecret", secret)
            .replace("/etc/livepeer/eth-password", password)
            .replace("/var/lib/livepeer", str(tmp_path / "lib")))


def test_goLivepeerOrchestratorConfigFileRuns(tmp_path, secret):
    """
    A go-livepeer orchestrator's config file (on-chain, with role flags,
    booleans both ways, an inline comment and C{-v}) sets every option.
    """
    with open(os.path.join(DATA, "golivepeer-orchestrator.conf")) as f:
        config = writeFile(tmp_path / "orchestrator.conf", samplePaths(tmp_path, f.read(), secret))
    options = orchestratorTap.Options(environ={})
    options.parseOptions(["-config", config])
    assert options["network"] == "arbitrum-one-mainnet"
    assert options["ethUrl"] == "https://arb1.example.net/v2/0123456789abcdef"
    assert options["ethKeystorePath"] == str(tmp_path / "lib" / "keystore")
    assert (options["serviceHost"], options["servicePort"]) == ("orch.example.com", 8935)
    assert (options["listenHost"], options["listenPort"]) == ("0.0.0.0", 8935)
    assert options["dataDir"] == str(tmp_path / "lib" / "arbitrum-one-mainnet")
    assert (options["pricePerUnit"], options["pixelsPerUnit"], options["ticketEV"]) == (1200, 1, 8000000000)
    assert options["maxGasPrice"] == 40000000000
    assert options["reward"] == "on"
    assert not options["initializeRound"]
    assert options["maxSessionsLimit"] == 40
    assert options["monitor"]
    assert options["verbosityLevel"] == 6


def test_goLivepeerTranscoderConfigFileRuns(tmp_path, secret):
    """
    A go-livepeer transcoder's config file sets every option; the
    certificate pin comes from the environment on top of it.
    """
    with open(os.path.join(DATA, "golivepeer-transcoder.conf")) as f:
        config = writeFile(tmp_path / "transcoder.conf", samplePaths(tmp_path, f.read(), secret))
    options = transcoderOptions(["-config", config], {"LP_ORCHCERTFINGERPRINT": "ab" * 32})
    assert (options["orchHost"], options["orchPort"]) == ("orch.example.com", 8935)
    assert options["devices"] == ["0", "1"]
    assert options["capacity"] == 12
    assert (options["cliHost"], options["cliPort"]) == ("127.0.0.1", 7936)
    assert options["dataDir"] == str(tmp_path / "lib" / "transcoder")
    assert options["monitor"]
    assert options["verbosityLevel"] == 4
    assert options["fingerprintBytes"] == bytes.fromhex("ab" * 32)


def test_rereadReadsTheConfigFileAgain(tmp_path, secret):
    """
    C{reread} parses the same command line and environment again, with the
    config file as it is now (what a reload applies).
    """
    config = writeFile(tmp_path / "o.conf", f"orchSecret {secret}\nmaxSessions 3\n")
    options = orchestratorOptions(tmp_path, ["-config", config, "-monitor"], {"LP_CLIADDR": "127.0.0.1:7100"})
    writeFile(tmp_path / "o.conf", f"orchSecret {secret}\nmaxSessions 5\n")
    again = options.reread()
    assert again is not options
    assert (options["maxSessionsLimit"], again["maxSessionsLimit"]) == (3, 5)
    assert again["monitor"] and again["cliPort"] == 7100
    writeFile(tmp_path / "o.conf", f"orchSecret {secret}\nmaxSessions none\n")
    with pytest.raises(usage.UsageError, match="--maxSessions must be"):
        options.reread()
