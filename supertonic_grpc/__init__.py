"""supertonic-grpc: a streaming gRPC text-to-speech server for Supertonic-2."""

__version__ = "0.1.0"
