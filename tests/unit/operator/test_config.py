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
        config.DEFAULT_TRAINER_RESOURCES: '{"requests": {"memory": "32Gi", "cpu": 4}, "limits": {"memory": "64Gi"}}',
        config.DEFAULT_PREPARE_RESOURCES: '{"requests": {"cpu": 2}}',
    })
    assert parsed == OperatorConfig(
        trainer_image="reg/trainer:2", image_pull_policy="Always", namespaces=("a", "b"), rdzv_timeout_s=120,
        cluster_domain="corp.local", shm_size_limit="32Gi", force_delete_after_s=45.5,
        default_trainer_resources=((("cpu", "4"), ("memory", "32Gi")), (("memory", "64Gi"),)),
        default_prepare_resources=((("cpu", "2"),), ()),
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
            config.DEFAULT_TRAINER_RESOURCES: '{"requests": {"cpu": "lots"}}',
            config.DEFAULT_PREPARE_RESOURCES: '{"limits": {"memory": "much"}}',
        })
    message = str(caught.value)
    for variable in (config.IMAGE_PULL_POLICY, config.NAMESPACES, config.RDZV_TIMEOUT, config.CLUSTER_DOMAIN,
                     config.SHM_SIZE_LIMIT, config.TRAINER_IMAGE, config.DEFAULT_TRAINER_RESOURCES,
                     config.DEFAULT_PREPARE_RESOURCES):
        assert variable in message
    assert "Not_OK" in message and "Always, IfNotPresent, Never" in message


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("cpu=4", "must be JSON"),
        ('["cpu"]', "only the keys requests and limits"),
        ('{"request": {"cpu": 4}}', "only the keys requests and limits"),
        ('{"requests": ["cpu"]}', "requests must be an object"),
        ('{"requests": {"cpu": "four"}}', "requests.cpu: must be a Kubernetes quantity"),
        ('{"limits": {"memory": true}}', "limits.memory: must be a Kubernetes quantity"),
        ('{"limits": {"memory": "-1Gi"}}', "limits.memory: must not be negative"),
        ('{"requests": {"bad name!": 1}}', "is not a resource name"),
        ('{"requests": {"memory": "65Gi"}, "limits": {"memory": "64Gi"}}', "requests.memory (65Gi) must not exceed"),
    ],
)
def test_bad_default_trainer_resources_name_the_variable_and_the_key(raw, fragment):
    with pytest.raises(ConfigError) as caught:
        OperatorConfig.from_env({config.DEFAULT_TRAINER_RESOURCES: raw})
    assert f"{config.DEFAULT_TRAINER_RESOURCES}: " in str(caught.value) and fragment in str(caught.value)


def test_default_trainer_resources_accept_what_helm_writes():
    # Helm's toJson turns YAML numbers into JSON numbers (0.5, 4) and keeps an empty map as {}.
    assert OperatorConfig.from_env({config.DEFAULT_TRAINER_RESOURCES: "{}"}).default_trainer_resources == ((), ())
    parsed = OperatorConfig.from_env(
        {config.DEFAULT_TRAINER_RESOURCES: '{"requests": {"cpu": 0.5, "ephemeral-storage": "10G"}, "limits": {}}'}
    )
    assert parsed.default_trainer_resources == ((("cpu", "0.5"), ("ephemeral-storage", "10G")), ())
    hash(parsed)  # still a frozen, hashable config


@pytest.mark.parametrize(
    ("quantity", "value"),
    [("500m", "0.5"), ("2Gi", str(2 * 1024**3)), ("1.5k", "1500"), ("1e3", "1000"), (8, "8"), ("2E", "2e18"),
     ("100M", "1e8"), ("64Mi", str(64 * 1024**2))],
)
def test_quantity_values_compare_as_numbers(quantity, value):
    from decimal import Decimal

    assert config.quantity_value(quantity) == Decimal(value)
