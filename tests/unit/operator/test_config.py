"""OperatorConfig from the SFTJOB_OPERATOR_* environment: defaults, parsing, errors naming the variable."""

import pytest

from sftjob_operator import config
from sftjob_operator.config import ConfigError, OperatorConfig


def test_empty_environment_gives_the_defaults():
    assert OperatorConfig.from_env({}) == OperatorConfig()
    default = OperatorConfig()
    assert default.trainer_image == config.DEFAULT_TRAINER_IMAGE and default.image_pull_policy == "IfNotPresent"
    assert default.namespaces == () and default.cluster_domain == "" and default.shm_size_limit is None
    assert default.rdzv_timeout_s == 600


def test_every_variable_is_read():
    parsed = OperatorConfig.from_env({
        config.TRAINER_IMAGE: "reg/trainer:2",
        config.IMAGE_PULL_POLICY: "Always",
        config.NAMESPACES: "b, a,,a",
        config.RDZV_TIMEOUT: "120",
        config.CLUSTER_DOMAIN: "corp.local.",
        config.SHM_SIZE_LIMIT: "32Gi",
        config.FORCE_DELETE_AFTER: "45.5",
    })
    assert parsed == OperatorConfig(
        trainer_image="reg/trainer:2", image_pull_policy="Always", namespaces=("a", "b"), rdzv_timeout_s=120,
        cluster_domain="corp.local", shm_size_limit="32Gi", force_delete_after_s=45.5,
    )


def test_every_bad_variable_is_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        OperatorConfig.from_env({
            config.IMAGE_PULL_POLICY: "Sometimes",
            config.NAMESPACES: "ok,Not_OK",
            config.RDZV_TIMEOUT: "-1",
            config.CLUSTER_DOMAIN: "bad domain",
            config.SHM_SIZE_LIMIT: "lots",
            config.TRAINER_IMAGE: "a b",
        })
    message = str(caught.value)
    for variable in (config.IMAGE_PULL_POLICY, config.NAMESPACES, config.RDZV_TIMEOUT, config.CLUSTER_DOMAIN,
                     config.SHM_SIZE_LIMIT, config.TRAINER_IMAGE):
        assert variable in message
    assert "Not_OK" in message and "Always, IfNotPresent, Never" in message
