"""Stream speech from a supertonic-grpc server into a WAV file, chunk by chunk.

    supertonic-grpc serve &                     # or: make run
    python clients/python/example.py "Hello there. How are you today?" -o hello.wav

Uses `supertonic_client.client`, the typed wrapper over the generated stubs.
"""

from __future__ import annotations

import argparse
import sys
import wave

import numpy as np

from supertonic_client.client import SupertonicClient, SupertonicError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text")
    parser.add_argument("--server", default="localhost:50051")
    parser.add_argument("--voice", default="F1")
    parser.add_argument("--language", default="en")
    parser.add_argument("-o", "--output", default="example.wav")
    args = parser.parse_args(argv)

    with SupertonicClient(args.server, timeout=60) as tts:
        try:
            listing = tts.voices()
            print(f"server model: {listing.model_state}, voices: ", end="")
            print(", ".join(v.name for v in listing.voices))

            stream = tts.stream(args.text, voice=args.voice, language=args.language)
            pieces = []
            for chunk in stream:  # each chunk arrives while later ones are still computed
                print(
                    f"chunk {chunk.index}: {chunk.duration_seconds:.2f} s "
                    f"(batch of {chunk.timings.batch_size}) {chunk.text!r}"
                )
                pieces.append(chunk.audio)
        except SupertonicError as exc:
            print(f"request failed: {exc.code.name}: {exc.message}", file=sys.stderr)
            return 1

    summary = stream.summary
    assert summary is not None  # the server always ends a stream with its summary
    audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    with wave.open(args.output, "wb") as f:  # 16-bit mono PCM
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(summary.sample_rate_hz)
        f.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    print(
        f"wrote {args.output}: {summary.audio_seconds:.2f} s, first audio after "
        f"{summary.time_to_first_audio_seconds:.3f} s, seed {summary.seed}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
