"""hack/images.sh's podman configuration: host network only, no sysctls, rlimits that root may set here.
(The images themselves are built and run by tests/images/, marker `images`.)"""

import resource
import subprocess
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def containers_conf(tmp_path: Path) -> tuple[str, dict]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TRAINING_HUB_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(["bash", str(REPO / "hack" / "images.sh"), "env"], capture_output=True, text=True, env=env,
                         check=True, timeout=30).stdout
    path = out.strip().removeprefix("export CONTAINERS_CONF=")
    return path, tomllib.loads(Path(path).read_text())


def test_env_points_podman_at_a_project_file_with_host_networking_and_no_sysctls(tmp_path):
    path, conf = containers_conf(tmp_path)
    assert path == str(tmp_path / "cache" / "images" / "containers.conf")  # the project's file, never /etc
    assert conf["containers"]["netns"] == "host"  # no bridge, no iptables chain, no route
    assert conf["containers"]["default_sysctls"] == []
    assert conf["engine"]["cgroup_manager"] == "cgroupfs"


def test_default_ulimits_stay_within_the_hard_limits(tmp_path):
    _, conf = containers_conf(tmp_path)
    limits = dict(item.split("=", 1) for item in conf["containers"]["default_ulimits"])
    hard = {"nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1], "nproc": resource.getrlimit(resource.RLIMIT_NPROC)[1]}
    assert set(limits) == {"nofile", "nproc"}
    for name, value in limits.items():
        soft, high = (int(v) for v in value.split(":"))
        assert soft == high
        assert hard[name] == resource.RLIM_INFINITY or high <= hard[name], (name, value, hard[name])
    assert int(limits["nproc"].split(":")[1]) <= 32768  # conmon's own cap on these machines


def test_names_are_the_interface_other_tools_use():
    out = subprocess.run(["bash", str(REPO / "hack" / "images.sh"), "names"], capture_output=True, text=True,
                         check=True, timeout=30).stdout.split()
    assert out == ["localhost/training-hub-operator:dev", "localhost/training-hub-trainer:dev"]


def test_unknown_image_names_the_allowed_ones():
    result = subprocess.run(["bash", str(REPO / "hack" / "images.sh"), "archive", "nope"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode != 0
    assert "operator|trainer" in result.stderr
