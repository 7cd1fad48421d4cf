# -*- test-case-name: tests.test_orchservice -*-
"""
go-livepeer's protobuf messages (package C{net}), generated from lp_rpc.proto.
"""
