"""The light Python client for supertonic-grpc: `supertonic_client.client`."""
