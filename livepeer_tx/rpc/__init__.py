# -*- test-case-name: tests.test_grpc_h2 -*-
"""
gRPC over HTTP/2 on Twisted, on the same TLS port as the Site: the wire format
(L{livepeer_tx.rpc.wire}), the methods served (L{livepeer_tx.rpc.registry}),
the HTTP/2 connection that serves them (L{livepeer_tx.rpc.h2grpc}) and a
refusal that works on HTTP/1.1 and HTTP/2 requests (L{livepeer_tx.rpc.refusal}).
No Livepeer service lives here.
"""

from livepeer_tx.rpc.h2grpc import (
    ALPN_PROTOCOLS,
    GRPCH2Connection,
    GRPCSettings,
    HTTPChannelSelector,
    ServerCall,
    channelFactory,
)
from livepeer_tx.rpc.refusal import http11Refusal, isHTTP2, refuseRequest
from livepeer_tx.rpc.registry import MethodKind, ServiceRegistry
from livepeer_tx.rpc.wire import GRPCError, StatusCode

__all__ = [
    "ALPN_PROTOCOLS",
    "GRPCError",
    "GRPCH2Connection",
    "GRPCSettings",
    "HTTPChannelSelector",
    "MethodKind",
    "ServerCall",
    "ServiceRegistry",
    "StatusCode",
    "channelFactory",
    "http11Refusal",
    "isHTTP2",
    "refuseRequest",
]
