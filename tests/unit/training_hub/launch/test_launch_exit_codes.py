"""Exit codes and env names are a contract with the operator: they must match docs/architecture.md."""

from __future__ import annotations

import re
from pathlib import Path

from training_hub.launch import env
from training_hub.launch.exit_codes import EXIT_CODE_OF, ExitCode, Outcome, exit_code_for_signal_death

ARCHITECTURE = Path(__file__).resolve().parents[4] / "docs" / "architecture.md"


def _contract_section(title: str) -> str:
    text = ARCHITECTURE.read_text()
    start = text.index(f"## Contract: {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_exit_codes_match_the_contract_table():
    rows = re.findall(r"^\| (\d+) \| `([A-Z_]+)`", _contract_section("pod → operator"), re.MULTILINE)
    assert rows, "the contract table of exit codes was not found"
    documented = {name: int(code) for code, name in rows}
    assert documented == {code.name: code.value for code in ExitCode}


def test_outcomes_match_the_documented_summary():
    documented = re.search(r'"outcome": "([a-z_|]+)"', _contract_section("pod → operator"))
    assert documented is not None
    assert set(documented[1].split("|")) == {outcome.value for outcome in Outcome}
    assert set(EXIT_CODE_OF) == set(Outcome)


def test_environment_variable_names_match_the_contract():
    documented = set(re.findall(r"^\| `(TRAINING_HUB_[A-Z_]+)` \|", _contract_section("operator → pod"), re.MULTILINE))
    ours = {value for name, value in vars(env).items() if name.isupper() and isinstance(value, str) and value.startswith("TRAINING_HUB_")}
    assert documented == ours


def test_signal_deaths_read_as_shell_exit_codes():
    assert exit_code_for_signal_death(-9) == 137  # OOM killer: the contract's 137
    assert exit_code_for_signal_death(-15) == 143
    assert exit_code_for_signal_death(3) == 3
    assert ExitCode.PREEMPTED == 143
