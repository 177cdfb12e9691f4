"""The light Python client for supertonic-grpc: grpcio, protobuf and numpy, no torch.

`SupertonicClient` / `AsyncSupertonicClient` (in `supertonic_client.client`) wrap the
generated stubs (`supertonic_client._proto.supertonic.v1`); a call's chunks arrive through
`streams`, typed as in `replies`, its options are built in `options`, failures are
`errors.SupertonicError`. `supertonic_client.pipecat` and `supertonic_client.livekit` plug
the server into those agent frameworks (optional extras).
"""

from supertonic_client.audio import Encoding
from supertonic_client.client import (
    AsyncStream,
    AsyncSupertonicClient,
    AsyncTextStream,
    Chunk,
    Clip,
    Stream,
    Summary,
    SupertonicClient,
    SupertonicError,
    TextStream,
    WordTiming,
)

__all__ = [
    "AsyncStream",
    "AsyncSupertonicClient",
    "AsyncTextStream",
    "Chunk",
    "Clip",
    "Encoding",
    "Stream",
    "Summary",
    "SupertonicClient",
    "SupertonicError",
    "TextStream",
    "WordTiming",
]
