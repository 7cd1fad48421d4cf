# -*- test-case-name: tests.test_units -*-
"""
Parsing the C{host:port} values of go-livepeer's address options, and
writing addresses back the way go-livepeer logs them.
"""

from urllib.parse import urlsplit


def parseHostPort(text, defaultHost, defaultPort):
    """
    Parse C{host:port}, C{:port}, C{host}, C{[v6]:port} or a URL with an
    https scheme, as go-livepeer's address options accept them.

    @return: C{(host, port)}.
    @raise ValueError: the text cannot be an address (or has a path).
    """
    text = (text or "").strip()
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("https", "wss"):
            raise ValueError(f"{text!r}: only https:// addresses are supported")
        if parts.path not in ("", "/"):
            raise ValueError(f"{text!r}: an address cannot have a path")
        text = parts.netloc
    if not text:
        return defaultHost, defaultPort
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        portText = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") > 1:
        host, portText = text, ""
    else:
        host, _, portText = text.partition(":")
    host = host or defaultHost
    if portText:
        if not portText.isdigit() or not 0 < int(portText) < 65536:
            raise ValueError(f"{text!r}: invalid port {portText!r}")
        port = int(portText)
    else:
        port = defaultPort
    return host, port


def formatHostPort(host, port):
    """
    Join a host and port, bracketing IPv6 literals.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describeAddress(address):
    """
    C{host:port} of a Twisted address (C{[v6]:port} for IPv6), or
    C{unknown} for one without a host, as go-livepeer logs a peer.
    """
    host = getattr(address, "host", None)
    return "unknown" if host is None else formatHostPort(host, getattr(address, "port", 0))
