"""The client transports: one per wire protocol (HTTP, gRPC), both driven by the client core."""
