"""What an SFTJob pod runs: the `training-hub` command (cli.py) and the pieces of the operator contract.

See docs/entrypoint.md and docs/architecture.md ("Contract: operator -> pod", "pod -> operator").
"""
