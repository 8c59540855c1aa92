"""The server process and its thin transports (REST, gRPC, OpenRLHF) over the engine."""
