"""`python -m supertonic_grpc.cli`: the same command as `supertonic-grpc`."""

import sys

from supertonic_grpc.cli import main

sys.exit(main())
