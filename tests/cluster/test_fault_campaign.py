"""The short fault campaign (tests/support/fault_campaign.py) in CI: a fixed seed, 8 faults, every invariant checked
continuously; prints the figures. Node deletions are left to the long campaign (`python -m
tests.support.fault_campaign`, every kind): each costs ~45 s, the pod garbage collector's quarantine of pods whose
node is gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.deploy_helpers import install_crd
from tests.support.fault_campaign import DEFAULT_WEIGHTS, KINDS, Campaign

pytestmark = [pytest.mark.cluster]


@pytest.mark.timeout(400)
def test_short_fault_campaign_keeps_every_invariant(cluster, namespace, tmp_path: Path):
    install_crd(cluster)
    weights = {**DEFAULT_WEIGHTS, "node_delete": 0}
    campaign = Campaign(cluster, namespace, seed=11, faults=8, jobs=2, nnodes=2, log_dir=tmp_path, weights=weights,
                        converge_timeout=90)
    try:
        report = campaign.run()
    finally:
        campaign.remove_pool()
    print("\n" + report.text())
    assert set(report.faults) == set(KINDS) - {"node_delete"}, report.faults
    assert report.ok, report.text()
    assert report.converge_seconds is not None and report.delete_seconds
