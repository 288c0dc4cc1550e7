"""The images built here by hack/images.sh, for tests marked ``images``.

They are built once per session, before the first test runs (so no test's timeout pays for a cold build), and only
when such a test is selected. A build whose inputs did not change is a no-op (hack/images.sh keeps a key per image).
Without podman, buildah or mmdebstrap the tests are skipped with the missing one named (``hack/images.sh prereqs``
installs them); with ``TRAINING_HUB_REQUIRE_IMAGES=1`` (CI) they fail instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGES_SH = REPO / "hack" / "images.sh"
NAMES = ("operator", "trainer")


def images_required() -> bool:
    return os.environ.get("TRAINING_HUB_REQUIRE_IMAGES", "").strip().lower() not in ("", "0", "false", "no")


def images_sh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(IMAGES_SH), *args], capture_output=True, text=True, timeout=timeout)


class SessionImages:
    problem: str | None = None
    built: dict[str, str] = {}
    env: dict[str, str] | None = None

    @classmethod
    def build(cls) -> None:
        if cls.env is not None or cls.problem is not None:
            return
        check = images_sh("check")
        if check.returncode != 0:
            cls.problem = f"images cannot be built here: {(check.stdout + check.stderr).strip()}"
            return
        started = time.monotonic()
        result = images_sh("build", *NAMES, timeout=3600)
        if result.returncode != 0:
            cls.problem = f"hack/images.sh build failed:\n{result.stderr[-4000:]}"
            return
        print(f"\nimages: built or current in {time.monotonic() - started:.0f} s", file=sys.stderr)
        names = images_sh("names").stdout.split()
        cls.built = {name: next(image for image in names if f"-{name}:" in image) for name in NAMES}
        exports = images_sh("env").stdout.split()
        conf = next(item.split("=", 1)[1] for item in exports if item.startswith("CONTAINERS_CONF="))
        cls.env = {**os.environ, "CONTAINERS_CONF": conf}
