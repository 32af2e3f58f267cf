"""Fixtures. One local Ray instance serves every test that needs one (started by the first, shut
down at the end of the session); the multi-node tests stop it while their own cluster runs.
Tests that need Ray carry the `ray` marker, so `pytest -m "not ray"` is the fast unit loop."""
import os

import pytest

from tests.helpers import CREDENTIALS, make_grounder

# Dummy AWS credentials for the whole session, set before any Ray process starts, so that every
# process finds them as it would find its node's own (the project never copies them into objects).
for _name, _value in CREDENTIALS.items():
    os.environ.setdefault(_name, _value)
# Ray Train's controller polls its workers every 2 s by default; every test run starts several.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

pytest_plugins = ["tests.s3_server"]

RAY_FIXTURES = {"ray_cluster", "cluster", "ray_head", "service"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)


@pytest.fixture
def grounder():
    return make_grounder()


@pytest.fixture(scope="session")
def _ray_session():
    yield
    import ray

    ray.shutdown()


@pytest.fixture(scope="module")
def ray_cluster(_ray_session):
    """The session's local Ray instance (8 logical CPUs on this 2-core machine, so that Ray Data and
    two training workers all get slots), started if it is not running."""
    import ray

    from tcl.ray import runtime

    if not ray.is_initialized():
        os.environ.pop("RAY_ADDRESS", None)
        runtime.init(num_cpus=8)
    yield
