# -*- test-case-name: tests.test_grpc_h2 -*-
"""
The gRPC methods a port serves, by full path (C{/net.Orchestrator/GetOrchestrator}).
"""

import enum
from dataclasses import dataclass
from typing import Any, Callable

from livepeer_tx.rpc.wire import GRPCError, StatusCode


class MethodKind(enum.Enum):
    """
    How a method answers: one message, or a stream of them.
    """

    UNARY = "unary"
    SERVER_STREAMING = "server-streaming"


@dataclass(frozen=True)
class RPCMethod:
    """
    One method: its full path, the protobuf class of its request, the callable
    that answers it and its kind.

    A unary handler is called as C{handler(request, call)} and returns the
    response message or a Deferred of it. A server-streaming handler is called
    the same way, sends messages with C{call.send(message)} and returns a
    Deferred that fires when it is done (or L{None} if it is done at once).
    Either may raise, or fail its Deferred with, L{GRPCError} to end the call
    with that status; C{call} is a L{livepeer_tx.rpc.h2grpc.ServerCall}.
    """

    path: str
    requestClass: Any
    handler: Callable
    kind: MethodKind


class ServiceRegistry:
    """
    The methods a port serves, looked up by the C{:path} of a request.
    """

    def __init__(self):
        self._methods = {}
        self._services = set()

    def addUnary(self, path, requestClass, handler):
        """
        Serve C{path} with a handler that answers one message.

        @param path: C{/package.Service/Method}.
        @param requestClass: the protobuf message class of the request.
        @param handler: C{handler(request, call)} returning a message or a
            Deferred of one.
        """
        self._add(RPCMethod(path, requestClass, handler, MethodKind.UNARY))

    def addServerStreaming(self, path, requestClass, handler):
        """
        Serve C{path} with a handler that sends a stream of messages with
        C{call.send} and returns a Deferred that fires when it is done.
        """
        self._add(RPCMethod(path, requestClass, handler, MethodKind.SERVER_STREAMING))

    def _add(self, method):
        service, _ = splitPath(method.path)
        if method.path in self._methods:
            raise ValueError(f"{method.path} is already registered")
        self._methods[method.path] = method
        self._services.add(service)

    def lookup(self, path):
        """
        The L{RPCMethod} serving C{path}.

        @param path: the request's C{:path}, as text.
        @raise GRPCError: UNIMPLEMENTED, with grpc-go's wording, when no method
            has this path.
        """
        method = self._methods.get(path)
        if method is not None:
            return method
        try:
            service, name = splitPath(path)
        except ValueError:
            raise GRPCError(StatusCode.UNIMPLEMENTED, f"malformed method name: {path!r}") from None
        if service in self._services:
            raise GRPCError(StatusCode.UNIMPLEMENTED, f"unknown method {name} for service {service}")
        raise GRPCError(StatusCode.UNIMPLEMENTED, f"unknown service {service}")

    def __contains__(self, path):
        return path in self._methods


def splitPath(path):
    """
    Split C{/package.Service/Method} into C{("package.Service", "Method")}.

    @raise ValueError: the path does not have that shape.
    """
    parts = path.split("/")
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
        raise ValueError(f"not a gRPC method path: {path!r}")
    return parts[1], parts[2]
