"""pools/cluster/aws-gpu.yaml against Ray's own cluster launcher schema and checks (what `ray up`
runs before it touches a cloud), plus the properties docs/cluster.md promises."""

import copy
import json
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed in the venv")

import ray.autoscaler  # noqa: E402
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "pools" / "cluster" / "aws-gpu.yaml"
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_config_matches_rays_schema(config):
    jsonschema.validate(config, json.loads(SCHEMA.read_text()))


def test_config_passes_ray_up_preparation_and_validation(config):
    # the same two steps `ray up` runs first: merge AWS defaults, then validate
    validate_config(prepare_config(copy.deepcopy(config)))


def test_schema_check_can_fail(config):
    bad = copy.deepcopy(config)
    bad["available_node_types"]["worker.gpu"]["min_worker"] = 0  # a typo
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        jsonschema.validate(bad, json.loads(SCHEMA.read_text()))


def test_cpu_head_and_gpu_workers_from_zero_with_token_auth(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    gpu = [t for name, t in types.items() if name != config["head_node_type"]]
    assert config["provider"]["type"] == "aws"
    assert head["resources"].get("GPU", 0) == 0
    assert len(gpu) == 1 and gpu[0]["resources"]["GPU"] >= 1 and gpu[0]["min_workers"] == 0
    assert gpu[0]["max_workers"] >= 1
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    assert "~/.ray/auth_token" in config["file_mounts"]
    assert any("pip install" in c and "-e ~/whichmodel" in c for c in config["setup_commands"])
    assert config["file_mounts"]["~/whichmodel"] == "."
