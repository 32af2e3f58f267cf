"""cluster.yaml: Ray's own validator, and Ray's own AWS bootstrap (what `ray up` runs before it
starts a node) against moto's EC2 and IAM mock, which shows the config the launcher resolves:
the AMI, the instance profiles, the zone, the resources of each node type."""
import copy
import os
import re

import pytest
import ray
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DLAMI = "resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"


def load(account: str = "123456789012") -> dict:
    with open(os.path.join(REPO, "cluster.yaml")) as f:
        return yaml.safe_load(f.read().replace("ACCOUNT", account))


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


def test_images_pin_ray_python_and_torch_as_the_project_does_and_no_secret_is_written():
    config = load()
    with open(os.path.join(REPO, "docker", "Dockerfile")) as f:
        dockerfile = f.read()
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        pyproject = f.read()
    base = re.search(r"ARG BASE=rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-gpu", dockerfile)
    assert base and base.group(1) == ray.__version__ == "2.60.0"
    assert f'requires-python = ">={base.group(2)}.{base.group(3)}"' in pyproject
    for pin in ("torch==2.14.1", "torchvision==0.29.1"):
        assert pin in dockerfile and f'"{pin}"' in pyproject
    assert config["docker"]["worker_image"].endswith("-gpu") and config["docker"]["head_image"].endswith("-cpu")
    assert config["available_node_types"]["cpu"]["docker"]["worker_image"].endswith("-cpu")  # no GPU image on CPU nodes
    assert not any("--shm-size" in option for option in config["docker"]["run_options"])  # Ray sizes it
    assert "setup_commands" not in config  # nothing installed at node start: it is in the images
    text = open(os.path.join(REPO, "cluster.yaml")).read()
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key\s*[:=]|AWS_SECRET_ACCESS_KEY\s*[:=]", text)


@pytest.fixture
def mocked_aws(tmp_path, monkeypatch):
    """moto's EC2, IAM and STS in this process, with the roles docs/operations.md has the user make:
    the worker profile, and Ray's head profile made beforehand (Ray sleeps 30 s when it makes it)."""
    moto = pytest.importorskip("moto")
    import boto3

    monkeypatch.setenv("HOME", str(tmp_path))  # Ray writes the cluster's SSH key to ~/.ssh
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with moto.mock_aws():
        iam = boto3.client("iam", region_name="us-west-2")
        trust = '{"Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}'
        for name in ("ray-autoscaler-v1", "tcl-worker"):
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)
            iam.create_instance_profile(InstanceProfileName=name)
            iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
        yield boto3.client("ec2", region_name="us-west-2")


def test_rays_aws_bootstrap_resolves_the_cluster(mocked_aws):
    from ray.autoscaler._private.commands import _bootstrap_config

    resolved = _bootstrap_config(load(), no_config_cache=True)
    types = resolved["available_node_types"]
    # the AMI: AWS's Deep Learning Base GPU AMI (NVIDIA driver >= 580), resolved by EC2 at launch
    assert {t["node_config"]["ImageId"] for t in types.values()} == {DLAMI}
    # instance profiles: Ray's own on the head (it starts the workers), tcl-worker on every worker type
    assert resolved["head_node"]["IamInstanceProfile"]["Arn"].endswith(":instance-profile/ray-autoscaler-v1")
    assert "IamInstanceProfile" not in types["head"]["node_config"]
    for name in ("cpu", "gpu_1x", "gpu_8x", "gpu_8x_spot"):
        assert types[name]["node_config"]["IamInstanceProfile"]["Arn"] == "arn:aws:iam::123456789012:instance-profile/tcl-worker"
    # one availability zone
    subnet_ids = {s for t in types.values() for s in t["node_config"]["SubnetIds"]}
    zones = {s["AvailabilityZone"] for s in mocked_aws.describe_subnets(SubnetIds=sorted(subnet_ids))["Subnets"]}
    assert zones == {"us-west-2a"}
    # resources per type, as the autoscaler plans with them
    assert types["head"]["resources"]["CPU"] == 0
    for name in ("gpu_8x", "gpu_8x_spot"):
        assert types[name]["resources"]["GPU"] == 8 and types[name]["resources"]["train_gpu"] == 8
        assert types[name]["resources"]["accelerator_type:A100"] == 1
    assert types["gpu_1x"]["resources"]["GPU"] == 1 and "train_gpu" not in types["gpu_1x"]["resources"]
    assert "GPU" not in types["cpu"]["resources"] and types["cpu"]["resources"]["CPU"] == 32
    assert types["gpu_8x_spot"]["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert types["gpu_8x_spot"]["max_workers"] == 0  # opt-in


def test_the_paper_config_trains_only_on_the_8_gpu_nodes():
    from tcl import config as config_lib
    from tcl.training import TrainConfig

    cfg = config_lib.load(TrainConfig, os.path.join(REPO, "configs", "cc3m_cc12m.yaml"))
    types = load()["available_node_types"]
    wanted = set(cfg.run.resources_per_worker)
    assert wanted and all(cfg.run.resources_per_worker[r] == 1 for r in wanted)
    placeable = [name for name, t in types.items() if wanted <= set(t.get("resources", {}))]
    assert placeable == ["gpu_8x", "gpu_8x_spot"]
    assert cfg.run.use_gpu and cfg.run.num_workers == 16 and cfg.optim.batch_size % 16 == 0
