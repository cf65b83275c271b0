"""The node's gRPC edge: the peer and Officer servers and their servicers, the clients that
call a partner (sync, cosigning) or the local node (officer_client), mutual TLS, the error
mapping at the edge, the one converter between messages and domain values (``wire``) and the
generated code (``_pb``). It calls into ``node.services``; nothing below imports it
(docs/adr/0025-package-layout.md)."""
