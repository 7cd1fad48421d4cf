# -*- test-case-name: tests.test_reload -*-
"""
Re-reading a daemon's options on SIGHUP.

A daemon's options come from its command line, C{LP_*} variables and a
C{--config} file. On a reload they are read again through C{readConfig}: a
callable taking no argument that returns the options parsed afresh from the
same sources (a new, validated C{Options}), or raises
L{usage.UsageError}. The configuration code provides it as the options'
C{reread} method (see L{rereadFunction}); without one, a reload reads
nothing but the secret and TLS files.

An option whose value changed since the last reading is applied when the
daemon can change it while running (L{OptionsReload.reloadable}); any other
change is logged as needing a restart. An option that did not change in the
configuration is left alone, so a value set at run time (C{POST
/setMaxSessions}) stays until the configuration changes it.
"""

from twisted.logger import Logger
from twisted.python import usage

from livepeer_tx.secret import SecretFileError


def reloadAll(log, reason, steps):
    """
    Run a daemon's reload: each step in order, then one summary line.

    @param log: the daemon's reloader's L{Logger}.
    @param reason: what asked for the reload (C{SIGHUP}), for the line.
    @param steps: C{(what, step)} pairs; C{step()} reloads C{what} and
        returns a word or two on what happened.
    @return: a dict of C{what} to its outcome (for the line and tests).
    """
    summary = {what: step() for what, step in steps}
    log.info("Reloaded ({reason}): {summary}", reason=reason,
             summary=", ".join(f"{what} {outcome}" for what, outcome in summary.items()))
    return summary


def secretTag(secret):
    """
    The L{Secret.currentTag<livepeer_tx.secret.Secret.currentTag>} of
    C{secret}, or L{None} when its file cannot be used now.
    """
    try:
        return secret.currentTag()
    except SecretFileError:
        return None


def rereadSecret(secret, log, errorConsequence=""):
    """
    Re-read a secret for a reload.

    @param log: the reloader's L{Logger}, for the error line.
    @param errorConsequence: what the error line adds after the error
        (e.g. C{"; registrations are refused until it is fixed"}).
    @return: C{(tag, None)} with the secret's current tag, or C{(None,
        outcome)}: C{"not a file"} for a literal secret, C{"error"} (logged)
        when its file cannot be used.
    """
    if secret.isLiteral:
        return None, "not a file"
    try:
        return secret.currentTag(), None
    except SecretFileError as e:
        log.error("Reload: {error}" + errorConsequence, error=str(e))
        return None, "error"


def rereadFunction(config):
    """
    The C{readConfig} of parsed options C{config}: its C{reread} method, or
    L{None} when the options cannot be read again.
    """
    return getattr(config, "reread", None)


def optionNames(config):
    """
    The names of the options a C{usage.Options} declares (not C{help} or
    C{version}).
    """
    names = {name.rstrip("=") for name in getattr(config, "longOpt", ())}
    return sorted(names - {"help", "version"})


class NodeReloader:
    """
    What a daemon's reloader does alike on both sides: the configuration,
    the secret, then the TLS files, each a step of L{reloadAll}. A subclass
    names its TLS step (C{tlsStep}) and provides C{_reloadSecret} and
    C{_reloadTLS}; C{_secretTag} is the secret's tag as last read.

    @param secret: the shared L{Secret<livepeer_tx.secret.Secret>}.
    @param options: the L{OptionsReload}.
    """

    _log = Logger()
    tlsStep = "TLS certificate"

    def __init__(self, secret, options):
        self._secret = secret
        self._options = options
        self._secretTag = secretTag(secret)

    def reload(self, reason="SIGHUP"):
        """
        Reload the configuration, the secret and the TLS files.

        @return: a dict of what happened to each (for the summary line and tests).
        """
        return reloadAll(self._log, reason, [
            ("configuration", self._options.reload),
            ("secret", self._reloadSecret),
            (self.tlsStep, self._reloadTLS),
        ])


class OptionsReload:
    """
    Re-reads a daemon's options and applies what changed.

    @param readConfig: see the module docstring, or L{None}.
    @param current: the options in force (as parsed at start).
    @param reloadable: a dict of option name to a callable taking the new
        options, which applies that option's new value.
    """

    _log = Logger()

    def __init__(self, readConfig, current, reloadable):
        self._readConfig = readConfig
        self.current = current
        self.reloadable = reloadable

    def reload(self):
        """
        Read the options again and apply the changes.

        @return: a short word for the summary line: C{not used} (nothing to
            read), C{unchanged}, C{changed} or C{error}.
        """
        if self._readConfig is None:
            return "not used"
        try:
            new = self._readConfig()
        except usage.UsageError as e:
            self._log.error("Reload: the configuration cannot be used ({error}); keeping the options in force",
                            error=str(e))
            return "error"
        changed = [name for name in optionNames(new) if new.get(name) != self.current.get(name)]
        for name in changed:
            apply = self.reloadable.get(name)
            if apply is None:
                self._log.warn("Reload: --{option} changed in the configuration; it takes effect at the next restart",
                               option=name)
                # Still the old value in force: say so again at the next reload.
                new[name] = self.current.get(name)
                continue
            try:
                apply(new)
            except Exception:
                self._log.failure("Reload: could not apply --{option}", option=name)
        self.current = new
        return "changed" if changed else "unchanged"
