"""
go-livepeer's protobuf messages (package C{net}), generated from lp_rpc.proto.
"""
