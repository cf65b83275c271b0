"""What a node does, without the network: reports, release and the outbox, the inbox and
receive rules, agreements and policy, the exchange log, the warning loop, witnessing, the
feed, STIX and CAP, audit. Services reach the database only through ``node.store``'s
repositories and never import ``node.rpc`` or ``node.cli`` (docs/adr/0025-package-layout.md)."""
