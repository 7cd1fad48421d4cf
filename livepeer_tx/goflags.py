# -*- test-case-name: tests.test_goflags -*-
"""
go-livepeer's ways of giving options, for the C{twistd} plugins' options.

go-livepeer reads its flags with Go's C{flag} package and peterbourgon/ff:
single- or double-dash flags (C{-maxSessions=4}, C{--orchSecret x}), bare
booleans (C{-monitor}) or booleans with a value (C{-reward=false}),
C{LP_<FLAG>} environment variables (the flag name upper-cased) and a
C{-config} file of C{flag value} lines. The command line wins over the
environment, which wins over the file.

L{GoFlagOptions} brings all of that to a L{usage.Options}: its
C{parseOptions} resolves the three sources into one plain C{--name=value}
command line and hands that to Twisted's parser, so validation stays in the
options class. Options with no equivalent are refused, naming the option and
where it came from.
"""

import os
import sys

from twisted.python import usage

from livepeer_tx import __version__

ENV_PREFIX = "LP_"

_TRUE = frozenset(["1", "t", "T", "TRUE", "true", "True"])
_FALSE = frozenset(["0", "f", "F", "FALSE", "false", "False"])

# Every flag of go-livepeer's livepeer binary (cmd/livepeer/livepeer.go and
# cmd/livepeer/starter/flags.go), so that one we do not implement is named as
# such instead of as a typo, and an LP_ variable for it is not ignored.
GO_LIVEPEER_FLAGS = frozenset("""
    FVfailGsbucket FVfailGskey aiMinRunnerVersion aiModels aiModelsDir aiProcessingRetryTimeout
    aiRunnerContainersPerGPU aiRunnerImage aiRunnerImageOverrides aiServerless aiServiceRegistry aiVerboseLogs
    aiWorker authWebhookUrl autoAdjustPrice blockPollingInterval broadcaster cliAddr config currentManifest
    dataDir datadir depositMultiplier discoveryTimeout ethAcctAddr ethController ethKeystorePath ethOrchAddr
    ethPassword ethUrl extraNodes gasLimit gateway gatewayHost hevcDecoding httpAddr httpIngest
    ignoreMaxPriceIfNeeded initializeRound initializeRoundMaxDelay j kafkaBootstrapServers kafkaGatewayTopic
    kafkaPassword kafkaUser liveAIAuthApiKey liveAIAuthWebhookUrl liveAICapRefreshModels liveAICapReportInterval
    liveAIHeartbeatHeaders liveAIHeartbeatInterval liveAIHeartbeatURL liveAISaveNSegments
    liveAITrickleHostForRunner liveOutSegmentTimeout livePaymentInterval liveRunnerAddr liveRunnerConfig
    liveRunnerProxyUrl localVerify maxAttempts maxFaceValue maxGasPrice maxPricePerCapability maxPricePerUnit
    maxSessions maxTicketEV maxTotalEV maxTransactionReplacements mediaMTXApiPassword metadataAmqpExchange
    metadataPublishTimeout metadataQueueUri metricsClientIP metricsPerStream minGasPrice minPerfScore monitor
    netint network nodes nvidia objectStore orchAddr orchBlocklist orchMinLivepeerVersion orchPerfStatsUrl
    orchSecret orchWebhookUrl orchestrator pixelsPerUnit priceFeedAddr pricePerBroadcaster pricePerGateway
    pricePerUnit recordStore redeemer redeemerAddr region remoteDiscovery remoteSigner remoteSignerAllowNoAuth
    remoteSignerHeaders remoteSignerUrl remoteSignerWebhookHeaders remoteSignerWebhookUrl reward rtmpAddr
    selectPriceExpFactor selectPriceWeight selectRandFreq selectStakeWeight serviceAddr startupAvailabilityCheck
    testTranscoder ticketEV transactionTimeout transcoder transcodingOptions useLiveRunners v verifierPath
    verifierUrl version
""".split())


class FixedBoolean:
    """
    A go-livepeer boolean flag accepted only with the value that describes
    what this daemon does anyway (a role flag, or a behaviour that is not
    optional here).

    @ivar value: the accepted value.
    @ivar reason: why another value is refused.
    """

    def __init__(self, value, reason):
        self.value = value
        self.reason = reason


# go-livepeer role flags that no livepeer-tx daemon plays: accepted only as false.
OTHER_ROLE_FIXED = {
    name: FixedBoolean(False, f"{what} is not part of livepeer-tx's orchestrator or transcoder")
    for name, what in {
        "gateway": "go-livepeer's gateway role",
        "broadcaster": "go-livepeer's gateway (broadcaster) role",
        "redeemer": "a separate ticket redemption service",
        "aiWorker": "an AI worker",
        "remoteSigner": "a remote signer service",
    }.items()
}

# go-livepeer names of options that have another name here.
GO_ALIASES = {"datadir": "dataDir", "v": "verbosity"}

_HELP_NAMES = frozenset(["help", "h"])


def parseGoBool(text):
    """
    A boolean in the spellings of Go's C{strconv.ParseBool}
    (C{1 t T TRUE true True} and C{0 f F FALSE false False}).

    @raise ValueError: C{text} is none of them.
    """
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (true, false, 1 or 0)")


def _settingAsBool(name, value, source):
    """
    A boolean flag's setting: C{True} when written bare (C{value} L{None}),
    else its Go boolean.

    @raise usage.UsageError: C{value} is not a Go boolean.
    """
    if value is None:
        return True
    try:
        return parseGoBool(value)
    except ValueError as e:
        raise usage.UsageError(f"-{name} ({source}): {e}") from None


def envName(name):
    """
    The environment variable go-livepeer reads for flag C{name}: C{LP_} and
    the name upper-cased, with C{-}, C{.} and C{/} as C{_}.
    """
    key = name.upper()
    for separator in "-./":
        key = key.replace(separator, "_")
    return ENV_PREFIX + key


def readConfigFile(path):
    """
    Read a go-livepeer config file: one C{flag value} line each, the value
    being the rest of the line; blank lines and lines starting with C{#} are
    skipped, a C{ #} ends the value, a flag alone means C{true} and leading
    dashes on the flag are ignored (peterbourgon/ff's plain format).

    @return: a list of C{(name, value, lineNumber)}.
    @raise usage.UsageError: the file cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise usage.UsageError(f"--config {path}: cannot read it: {getattr(e, 'strerror', None) or e}") from None
    entries = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        name = parts[0].lstrip("-")
        value = parts[1].strip() if len(parts) > 1 else "true"
        comment = value.find(" #")
        if comment >= 0:
            value = value[:comment].strip()
        entries.append((name, value, number))
    return entries


class GoFlagResolver:
    """
    Resolve a command line, an environment and a config file, in go-livepeer's
    syntax and precedence, into a C{--name=value} command line for one
    L{usage.Options}.

    @ivar parameters: names of the options taking a value.
    @ivar flags: names of the boolean options.
    @ivar booleanParameters: options taking a value that also accept a Go
        boolean, mapped to C{(valueForTrue, valueForFalse, otherWords)}.
    @ivar aliases: other names, mapped to an option's name.
    @ivar fixed: L{FixedBoolean} by go-livepeer flag name.
    @ivar hints: extra words for the refusal of a go-livepeer flag.
    @ivar program: the daemon's name, for messages.
    """

    def __init__(self, parameters, flags, booleanParameters=None, aliases=None, fixed=None, hints=None,
                 program="this daemon"):
        self.parameters = frozenset(parameters)
        self.flags = frozenset(flags)
        self.booleanParameters = dict(booleanParameters or {})
        self.aliases = dict(aliases or {})
        self.fixed = dict(fixed or {})
        self.hints = dict(hints or {})
        self.program = program

    def _known(self, name):
        return name in self.parameters or name in self.flags or name in self.aliases or name in self.fixed

    def _refuse(self, name, source):
        if name in GO_LIVEPEER_FLAGS:
            hint = self.hints.get(name)
            message = f"-{name} ({source}) is a go-livepeer option with no equivalent in {self.program}"
            if hint:
                message += f": {hint}"
            raise usage.UsageError(message)
        raise usage.UsageError(f"unknown option -{name} ({source}); see --help")

    def _takesValue(self, name):
        name = self.aliases.get(name, name)
        return name in self.parameters and name not in self.booleanParameters

    def _acceptsAfterBareFlag(self, name, token):
        """
        Whether C{token}, following a boolean flag written without C{=}, is
        that flag's value (C{--reward true}) rather than the next argument.
        """
        if token in _TRUE or token in _FALSE:
            return True
        name = self.aliases.get(name, name)
        return name in self.booleanParameters and token in self.booleanParameters[name][2]

    def splitCommandLine(self, argv):
        """
        Read a go-livepeer style command line.

        @return: C{(helpOrVersion, [(name, value, source)])}: the C{help} or
            C{version} request if there is one, and the options in order;
            the value of a boolean written bare is L{None}.
        @raise usage.UsageError: an unknown option or a missing value.
        """
        settings = []
        index = 0
        while index < len(argv):
            token = argv[index]
            index += 1
            if token == "--":
                if index < len(argv):
                    raise usage.UsageError(f"unexpected argument {argv[index]!r}: {self.program} takes only options")
                break
            if not token.startswith("-") or token == "-":
                raise usage.UsageError(f"unexpected argument {token!r}: {self.program} takes only options")
            body = token[2:] if token.startswith("--") else token[1:]
            name, equals, value = body.partition("=")
            if not name or name.startswith("-"):
                raise usage.UsageError(f"bad option syntax {token!r}")
            if name in _HELP_NAMES:
                return "help", settings
            if name == "version":
                return "version", settings
            if not self._known(name):
                self._refuse(name, "command line")
            if equals:
                settings.append((name, value, "command line"))
            elif self._takesValue(name):
                if index >= len(argv):
                    raise usage.UsageError(f"option -{name} needs a value")
                settings.append((name, argv[index], "command line"))
                index += 1
            elif index < len(argv) and self._acceptsAfterBareFlag(name, argv[index]):
                settings.append((name, argv[index], "command line"))
                index += 1
            else:
                settings.append((name, None, "command line"))
        return None, settings

    def fromEnvironment(self, environ):
        """
        The options set by C{LP_*} variables (empty ones are ignored, as
        go-livepeer does).

        @return: a list of C{(name, value, source)}.
        @raise usage.UsageError: a variable names a go-livepeer flag with no
            equivalent here.
        """
        byVariable = {}
        for name in sorted(self.parameters | self.flags | set(self.aliases) | set(self.fixed)):
            byVariable.setdefault(envName(name), name)
        settings = []
        for variable, value in sorted(environ.items()):
            if not variable.startswith(ENV_PREFIX) or value == "":
                continue
            name = byVariable.get(variable)
            if name is None:
                goName = next((n for n in GO_LIVEPEER_FLAGS if envName(n) == variable), None)
                if goName is not None and goName not in ("version", "help"):
                    self._refuse(goName, f"environment variable {variable}")
                continue
            settings.append((name, value, f"environment variable {variable}"))
        return settings

    def fromConfigFile(self, path):
        """
        The options set by a go-livepeer config file; a line may also name
        the option by its C{LP_} variable, as ff allows.

        @return: a list of C{(name, value, source)}.
        @raise usage.UsageError: the file cannot be read, or a line names an
            unknown option.
        """
        settings = []
        byVariable = {envName(name): name for name in self.parameters | self.flags | set(self.fixed)}
        for name, value, number in readConfigFile(path):
            source = f"{path} line {number}"
            name = byVariable.get(name, name)
            if name == "config":
                raise usage.UsageError(f"-config ({source}): a config file cannot name another one")
            if not self._known(name):
                self._refuse(name, source)
            settings.append((name, value, source))
        return settings

    def _convert(self, name, value, source):
        """
        The C{--name=value} arguments for one setting, or none for a false
        boolean.
        """
        target = self.aliases.get(name, name)
        if name in self.fixed:
            fixed = self.fixed[name]
            wanted = _settingAsBool(name, value, source)
            if wanted != fixed.value:
                raise usage.UsageError(f"-{name}={str(wanted).lower()} ({source}): {fixed.reason}")
            return []
        if target in self.flags:
            return [f"--{target}"] if _settingAsBool(name, value, source) else []
        if target in self.booleanParameters:
            whenTrue, whenFalse, _ = self.booleanParameters[target]
            if value is None or value in _TRUE:
                value = whenTrue
            elif value in _FALSE:
                value = whenFalse
        return [f"--{target}={value}"]

    def resolve(self, argv, environ):
        """
        The C{--name=value} command line for Twisted's parser: each option
        from the command line if it is there, else from the environment, else
        from the config file (named by C{-config} on the command line, else
        by C{LP_CONFIG}); within one source the last setting wins.

        @return: C{(arguments, sources)}, C{sources} naming where each
            option given came from.
        """
        request, commandLine = self.splitCommandLine(argv)
        if request is not None:
            return [f"--{request}"], {}
        resolved = {}
        for layer in (self.fromEnvironment(environ), commandLine):
            for name, value, source in layer:
                resolved[self.aliases.get(name, name)] = (name, value, source)
        configPath = resolved["config"][1] if "config" in resolved else None
        if configPath:
            fromFile = {}
            for name, value, source in self.fromConfigFile(configPath):
                fromFile[self.aliases.get(name, name)] = (name, value, source)
            for key, setting in fromFile.items():
                resolved.setdefault(key, setting)
        arguments = []
        sources = {}
        for key, (name, value, source) in resolved.items():
            arguments.extend(self._convert(name, value, source))
            sources[key] = source
        return arguments, sources


class GoFlagOptions(usage.Options):
    """
    A L{usage.Options} that also takes options as go-livepeer does: single
    dashes, Go booleans, C{LP_*} variables and a C{--config} file, with the
    command line over the environment over the file.

    Subclasses may set C{goBooleanParameters} (options taking a value that
    also accept a Go boolean: C{{name: (whenTrue, whenFalse, otherWords)}}),
    C{goFixedBooleans} (L{FixedBoolean} by go-livepeer flag) and
    C{goHints} (extra words when refusing a go-livepeer flag).

    @ivar environ: the environment read for C{LP_*} variables.
    @ivar sources: after parsing, where each option given came from.
    @ivar arguments: the command line parsed.
    """

    optParameters = [
        ["config", None, None,
         "A go-livepeer config file: one 'flag value' line each (# comments; a flag alone means true). "
         "The command line overrides LP_<FLAG> environment variables, which override the file."],
        ["verbosity", "v", "3",
         "Log verbosity, as go-livepeer's -v: 5 or more adds debug lines (not with twistd's --syslog or "
         "--logger)."],
    ]

    goBooleanParameters = {}
    goFixedBooleans = {}
    goHints = {}
    goProgram = "this daemon"

    def __init__(self, environ=None):
        super().__init__()
        self.environ = os.environ if environ is None else environ
        self.sources = {}
        self.arguments = []

    def opt_version(self):
        """
        Print livepeer-tx's version and exit.
        """
        import platform

        import twisted

        print(f"livepeer-tx {__version__}")
        print(f"Twisted {twisted.__version__}, Python {platform.python_version()}")
        sys.exit(0)

    def resolver(self):
        """
        The L{GoFlagResolver} for this class's options.
        """
        parameters, flags = set(), set()
        for name in self.longOpt:
            if name.endswith("="):
                parameters.add(name[:-1])
            else:
                flags.add(name)
        flags -= {"help", "version"}
        fixed = dict(OTHER_ROLE_FIXED)
        fixed.update(self.goFixedBooleans)
        return GoFlagResolver(
            parameters, flags, booleanParameters=self.goBooleanParameters, aliases=GO_ALIASES, fixed=fixed,
            hints=self.goHints, program=self.goProgram)

    def parseOptions(self, options=None):
        """
        Resolve go-livepeer style options, then parse them as Twisted does.
        """
        if options is None:
            options = sys.argv[1:]
        self.arguments = list(options)
        arguments, self.sources = self.resolver().resolve(self.arguments, self.environ)
        super().parseOptions(arguments)

    def reread(self):
        """
        The options read again from the same command line, environment and
        config file, and validated (for a reload: the file may have changed).

        @raise usage.UsageError: they are no longer valid.
        """
        options = type(self)(environ=self.environ)
        options.parent = self.parent
        options.parseOptions(self.arguments)
        return options

    def postOptions(self):
        """
        Check the log verbosity.
        """
        try:
            self["verbosityLevel"] = int(self["verbosity"])
        except ValueError:
            raise usage.UsageError(f"-v must be a whole number, not {self['verbosity']!r}") from None

