"""Fixtures for the image tests: the images hack/images.sh built before the session's first test, and podman
configured like it (CONTAINERS_CONF: host network, rlimits that fit). See tests/support/images.py."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.images import SessionImages, images_required


def _unavailable(reason: str):
    if images_required():
        pytest.fail(f"TRAINING_HUB_REQUIRE_IMAGES is set, but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def built_images() -> dict[str, str]:
    SessionImages.build()  # normally done already, before the first test
    if SessionImages.env is None:
        _unavailable(SessionImages.problem or "the images were not built")
    return SessionImages.built


@pytest.fixture(scope="session")
def operator_image(built_images) -> str:
    return built_images["operator"]


@pytest.fixture(scope="session")
def trainer_image(built_images) -> str:
    return built_images["trainer"]


@pytest.fixture
def podman(built_images):
    def run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["podman", *args], capture_output=True, text=True, env=SessionImages.env,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    return run
