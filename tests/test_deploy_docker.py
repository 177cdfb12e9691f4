"""deploy/docker: the Dockerfiles agree with the Kubernetes manifests and the server, and the
build context they see (.dockerignore) holds everything their install step needs.

The images themselves are not built here: these machines have no working container runtime
(no Docker daemon) and no access to a container registry for the base image. The install
step is rehearsed instead by building the wheels from exactly the files of that context.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from deploytools import DEPLOY, REPO

from supertonic_grpc.settings import ENV_PREFIX, Settings

DOCKERFILES = {flavour: DEPLOY / "docker" / f"Dockerfile.{flavour}" for flavour in ("cpu", "cuda")}


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _context_files() -> list[Path]:
    """Files of the repository that .dockerignore lets into the build context."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    kept = []
    for name in tracked:
        included = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            glob = pattern.lstrip("!").rstrip("/")
            hit = fnmatch.fnmatch(name, glob) or name.startswith(glob + "/")
            hit = hit or fnmatch.fnmatch(name, glob.replace("**/", "*"))
            if hit:
                included = negate
        if included:
            kept.append(Path(name))
    return kept


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile_matches_the_manifests_and_the_server(flavour: str) -> None:
    steps = _instructions(DOCKERFILES[flavour])
    last_stage = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    user = [rest for word, rest in last_stage if word == "USER"]
    deployment = yaml.safe_load((DEPLOY / "k8s" / "base" / "deployment.yaml").read_text())
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert user == [f"{pod_security['runAsUser']}:{pod_security['runAsGroup']}"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    exposed = {int(p) for word, rest in last_stage if word == "EXPOSE" for p in rest.split()}
    assert exposed == {p["containerPort"] for p in container["ports"]}
    assert ("ENTRYPOINT", '["supertonic-grpc"]') in last_stage
    assert "supertonic-grpc" in (REPO / "pyproject.toml").read_text()
    assert ("STOPSIGNAL", "SIGTERM") in last_stage
    env = " ".join(rest for word, rest in last_stage if word == "ENV")
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.__dataclass_fields__}
    for name in re.findall(r"\b(SUPERTONIC_\w+)=", env):
        assert name in known, name
    assert f"SUPERTONIC_DEVICE={'cuda' if flavour == 'cuda' else 'cpu'}" in env


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_every_copied_path_is_in_the_build_context(flavour: str) -> None:
    context = {str(p) for p in _context_files()}
    for word, rest in _instructions(DOCKERFILES[flavour]):
        if word != "COPY" or rest.startswith("--from"):
            continue
        *sources, _dest = rest.split()
        for source in sources:
            assert any(f == source or f.startswith(source.rstrip("/") + "/") for f in context), (
                f"{source} is not in the build context"
            )


@pytest.mark.slow
def test_the_build_context_builds_both_packages(tmp_path: Path) -> None:
    # What the images' `pip install ./clients/python .` builds, from the context alone.
    context = tmp_path / "context"
    for rel in _context_files():
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, context / rel)
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(context / "clients" / "python"), str(context)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (server,) = wheels.glob("supertonic_grpc-*.whl")
    (client,) = wheels.glob("supertonic_client-*.whl")
    server_files = zipfile.ZipFile(server).namelist()
    client_files = zipfile.ZipFile(client).namelist()
    assert "supertonic_grpc/server.py" in server_files
    assert any(n.endswith("entry_points.txt") for n in server_files)
    assert "supertonic_client/client.py" in client_files
    # The generated stubs travel in one of the two packages.
    assert any(n.endswith("/tts_pb2.py") for n in server_files + client_files)
