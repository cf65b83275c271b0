"""The Accord node: storage, gRPC servers and clients, the officer CLI (all I/O lives here)."""

from node.rpc import tls_policy

# Before anything imports grpc: gRPC core reads its TLS settings once, at import.
tls_policy.TLS12_REFUSED = tls_policy.refuse_tls12()
