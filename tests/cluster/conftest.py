"""Fixtures shared by the operator's cluster tests."""

from __future__ import annotations

import pytest

from tests.cluster.deploy_helpers import install_crd
from tests.cluster.operator_harness import create_pool


@pytest.fixture(scope="module")
def operator_pool(cluster):
    """The CRD installed and the operator tests' own tainted pool of fake GPU nodes (idempotent)."""
    install_crd(cluster)
    create_pool(cluster)
    return cluster
