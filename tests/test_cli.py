"""The `supertonic-grpc` command, run in-process on the demo bundle."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from supertonic_grpc import bundle as bundles
from supertonic_grpc import cli
from supertonic_grpc.audio import read_wav
from supertonic_grpc.bundle import ModelBundle, demo_bundle


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return demo_bundle()


@pytest.fixture
def demo(monkeypatch: pytest.MonkeyPatch, bundle: ModelBundle) -> ModelBundle:
    """Serve the module's demo bundle instead of building one per command (~3 s each)."""
    monkeypatch.setattr(bundles, "load_bundle", lambda model_dir=None: bundle)
    return bundle


def _reported_seconds(stdout: str) -> float:
    match = re.search(r"([0-9.]+) s of audio", stdout)
    assert match, stdout
    return float(match.group(1))


@pytest.mark.slow
def test_say_writes_wav(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.wav"
    empty = tmp_path / "no-model"  # nothing there: the real loader falls back to demo
    code = cli.main(
        ["say", "Hello world.", "--voice", "M1", "-o", str(out), "--model-dir", str(empty)]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    raw = out.read_bytes()
    assert raw[:4] == b"RIFF" and raw[8:12] == b"WAVE"
    assert int.from_bytes(raw[22:24], "little") == 1  # mono
    assert int.from_bytes(raw[24:28], "little") == 44100
    assert int.from_bytes(raw[34:36], "little") == 16  # bits per sample
    samples, rate = read_wav(out)
    assert rate == 44100
    assert len(samples) > 0 and np.isfinite(samples).all()
    line = captured.out.strip()
    assert "\n" not in line
    assert len(samples) / rate == pytest.approx(_reported_seconds(line), abs=0.01)
    assert "1 chunk" in line and "model demo" in line and "NOISE" in line


@pytest.mark.slow
def test_say_several_chunks_and_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], demo: ModelBundle
) -> None:
    out = tmp_path / "long.wav"
    text = "First sentence here. " + "And then a second, longer one follows it. " * 4
    args = ["say", text, "-o", str(out), "--steps", "1", "--sample-rate", "16000", "--seed", "5"]
    assert cli.main(args) == 0
    line = capsys.readouterr().out
    samples, rate = read_wav(out)
    assert rate == 16000
    assert len(samples) / rate == pytest.approx(_reported_seconds(line), abs=0.01)
    assert re.search(r"in [2-9] chunks", line), line


@pytest.mark.slow
def test_say_raw_writes_pcm_to_stdout(
    capsysbinary: pytest.CaptureFixture[bytes], demo: ModelBundle
) -> None:
    assert cli.main(["say", "Raw output.", "--raw", "--steps", "1", "--seed", "1"]) == 0
    captured = capsysbinary.readouterr()
    assert len(captured.out) % 2 == 0 and len(captured.out) > 1000
    seconds = _reported_seconds(captured.err.decode())
    assert len(captured.out) / 2 / 44100 == pytest.approx(seconds, abs=0.01)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["   "], "text"),
        (["Hi.", "--speed", "0.4"], "speed"),
        (["Hi.", "--speed", "2.1"], "speed"),
        (["Hi.", "--speed", "nan"], "speed"),
        (["Hi.", "--steps", "0"], "steps"),
        (["Hi.", "--steps", "51"], "steps"),
        (["Hi.", "--lang", "de"], "language"),
        (["Hi.", "--voice", "Q7"], "voice"),
    ],
)
def test_say_bad_input_exits_2(
    args: list[str],
    field: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    demo: ModelBundle,
) -> None:
    code = cli.main(["say", *args, "-o", str(tmp_path / "x.wav")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "\n" not in err and "Traceback" not in err
    assert f"error: {field}" in err, err
    assert not (tmp_path / "x.wav").exists()


def test_voices_lists_ten_and_demo(capsys: pytest.CaptureFixture[str], demo: ModelBundle) -> None:
    assert cli.main(["voices"]) == 0
    out = capsys.readouterr().out
    names = re.findall(r"^([MF][1-5]) ", out, flags=re.MULTILINE)
    assert sorted(names) == sorted(f"{g}{i}" for g in "MF" for i in range(1, 6))
    assert "female" in out and "male" in out and "en, ko, es, pt, fr" in out
    assert "model: demo" in out


def test_download_offline_is_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from supertonic_grpc.model import hub

    def offline(model_dir: Path | None = None, **_: object) -> Path:
        raise hub.DownloadError("could not download onnx/tts.json: huggingface.co unreachable")

    monkeypatch.setattr(hub, "download", offline)
    assert cli.main(["download", "--model-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "huggingface.co" in err


def test_serve_hands_settings_to_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from supertonic_grpc import server

    seen: dict[str, Any] = {}

    def fake_run(settings: Any) -> int:
        seen["settings"] = settings
        return 0

    monkeypatch.setattr(server, "run", fake_run)
    assert cli.main(["serve", "--port", "0", "--max-batch", "4", "--no-warmup"]) == 0
    settings = seen["settings"]
    assert (settings.port, settings.max_batch, settings.warmup) == (0, 4, False)


@pytest.mark.slow
def test_say_and_voices_via_server(
    live_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "remote.wav"
    args = ["say", "Over the network. Two chunks.", "--server", live_server.address]
    assert cli.main([*args, "-o", str(out), "--steps", "1"]) == 0
    line = capsys.readouterr().out
    samples, rate = read_wav(out)
    assert rate == 44100
    assert len(samples) / rate == pytest.approx(_reported_seconds(line), abs=0.01)
    assert cli.main(["say", "Hi.", "--server", live_server.address, "--voice", "Q7"]) == 2
    assert "voice" in capsys.readouterr().err
    assert cli.main(["voices", "--server", live_server.address]) == 0
    assert "model: demo" in capsys.readouterr().out


def test_say_server_loads_no_torch_server_load_tester_or_benchmarks(tmp_path: Path) -> None:
    # Each command imports what it needs when it runs: `say --server` needs only the light
    # client. Nothing listens on the port, so the command fails (exit 1) after connecting.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["say", "Hi.", "--server", f"127.0.0.1:{port}", "--timeout", "10"]
    code = (
        "import sys\n"
        "from supertonic_grpc import cli\n"
        f"code = cli.main({[*args, '-o', str(tmp_path / 'x.wav')]!r})\n"
        "print(code, *sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert out[0] == "1" and "supertonic_client.client" in out  # it did try the server
    heavy = ("torch", "loadtest", "benchmarks", "grpc_health.v1", "grpc_reflection.v1alpha")
    loaded = [m for m in out if m.startswith(heavy)]
    server_side = {"supertonic_grpc.server", "supertonic_grpc.engine", "supertonic_grpc.bundle"}
    assert not loaded and not server_side & set(out), loaded
    assert not (tmp_path / "x.wav").exists()  # no audio came: no half-written file


def test_bench_flags_reach_the_benchmark_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])
    assert exc.value.code == 0
    assert "--batch-sizes" in capsys.readouterr().out


def test_unknown_flag_of_other_commands_is_still_an_error() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["voices", "--no-such-flag"])
    assert exc.value.code == 2
