"""cluster.yaml against the cluster-config schema Ray ships (the validator `ray up` runs)."""
import copy
import os
import re

import pytest
import ray
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load() -> dict:
    with open(os.path.join(REPO, "cluster.yaml")) as f:
        return yaml.safe_load(f)


def validate(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_is_valid_for_ray():
    validate(load())


def test_a_broken_key_fails_validation():
    import jsonschema

    config = load()
    config["available_node_types"]["gpu_1x"]["min_worker"] = 1  # typo of min_workers
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate(config)


def test_cluster_yaml_matches_the_pinned_ray_and_python_and_holds_no_secrets():
    config = load()
    image = config["docker"]["image"]
    assert image.startswith("rayproject/ray:") and "ray-ml" not in image
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-gpu", image)
    assert match and match.group(1) == ray.__version__ == "2.60.0"
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        assert f'requires-python = ">={match.group(2)}.{match.group(3)}"' in f.read()
    node_types = config["available_node_types"]
    assert {"head", "gpu_1x", "gpu_8x"} <= set(node_types)
    assert node_types["gpu_1x"]["node_config"]["InstanceType"] == "g5.2xlarge"  # 1 GPU: serving, evaluation
    assert node_types["gpu_8x"]["node_config"]["InstanceType"] == "p4d.24xlarge"  # 8 GPUs: training
    text = open(os.path.join(REPO, "cluster.yaml")).read()
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key\s*[:=]|AWS_SECRET_ACCESS_KEY\s*[:=]", text)
