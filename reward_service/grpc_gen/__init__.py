"""Python stubs generated from protos/reward.proto by `make setup` (grpcio-tools; not committed)."""
