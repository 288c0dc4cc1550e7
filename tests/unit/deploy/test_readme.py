"""The README leads with the two set-up commands, and everything it points to exists."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
README = (REPO / "README.md").read_text()


def test_the_two_commands_come_first():
    first_block = re.search(r"```sh\n(.*?)```", README, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["bash hack/demo.sh", "bash hack/test.sh"]
    assert README.index("bash hack/demo.sh") < README.index("## Quickstart")
    for script in ("hack/demo.sh", "hack/test.sh"):
        assert (REPO / script).is_file()


def test_quickstarts_for_the_three_readers_and_the_architecture():
    headings = re.findall(r"^## (.+)$", README, flags=re.M)
    assert [h for h in headings if h.startswith("Quickstart")] == [
        "Quickstart: platform team (install the operator)",
        "Quickstart: data scientist (run a job)",
        "Quickstart: library user (Python)",
    ]
    assert "Architecture" in headings
    assert "spec → render → reconcile → status" in README


def test_every_linked_or_named_path_exists():
    linked = re.findall(r"\]\((?!https?://)([^)#]+)\)", README)
    named = re.findall(r"`((?:examples|deploy|hack|images|docs|tests|operator|training_hub)/[^`\s]*)`", README)
    missing = [p for p in {*linked, *named} if not (REPO / p.split(" ")[0]).exists()]
    assert linked and named and missing == []


def test_data_scientist_commands_use_a_real_example():
    import yaml

    job = yaml.safe_load((REPO / "examples" / "sftjob-single-node.yaml").read_text())
    name = job["metadata"]["name"]
    assert f"sftjob/{name}" in README and f"{name}-node-0" in README
