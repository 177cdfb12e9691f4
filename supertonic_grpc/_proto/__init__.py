"""The old import path of the generated stubs, kept as an alias (not a second copy).

The one generated package is `supertonic_client._proto` (clients/python, `make proto`); this
module registers its modules under `supertonic_grpc._proto...` too, so
`from supertonic_grpc._proto.supertonic.v1 import tts_pb2` yields the very same module and
the descriptors are registered once.
"""

import sys

from supertonic_client._proto import supertonic as _supertonic
from supertonic_client._proto.supertonic import v1 as _v1
from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc

for _name, _module in {
    "supertonic": _supertonic,
    "supertonic.v1": _v1,
    "supertonic.v1.tts_pb2": tts_pb2,
    "supertonic.v1.tts_pb2_grpc": tts_pb2_grpc,
}.items():
    sys.modules[f"{__name__}.{_name}"] = _module
