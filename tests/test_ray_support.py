"""``riff serve --ray`` without Ray installed, and the KubeRay example: no Ray cluster needed."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "examples" / "kuberay-rayservice.yaml"

#: Runs the CLI with ray unimportable (as if the extra were not installed).
NO_RAY = ("import sys; sys.modules['ray'] = None; "
          "from protocols.cli.main import main; sys.exit(main(sys.argv[1:]))")


def test_serve_ray_without_ray_says_how_to_install_it() -> None:
    out = subprocess.run([sys.executable, "-c", NO_RAY, "serve", "--ray", "--model", "tiny",
                          "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out
    lines = out.stderr.strip().splitlines()
    assert lines == ["riff serve: error: --ray needs Ray Serve: "
                     "pip install 'riffusion-engine[ray]'"], out.stderr
    assert out.stdout == ""  # nothing was served, no model loaded


def test_serve_without_ray_still_lists_its_ray_options() -> None:
    out = subprocess.run([sys.executable, "-c", NO_RAY, "serve", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for option in ("--ray ", "--ray-address", "--ray-dashboard", "--ray-replicas",
                   "--ray-autoscale", "--ray-gpus-per-replica", "--ray-batch-size",
                   "--ray-batch-wait-ms", "riffusion-engine[ray]"):
        assert option in out.stdout, option


def _manifest() -> dict[str, Any]:
    data = yaml.safe_load(MANIFEST.read_text())
    assert isinstance(data, dict)
    return data


def test_kuberay_manifest_is_a_rayservice_of_this_package() -> None:
    doc = _manifest()
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    serve = yaml.safe_load(doc["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    module, _, attr = app["import_path"].partition(":")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    tree = ast.parse(Path(spec.origin).read_text())
    assert attr in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, attr
    assert app["route_prefix"] == "/"
    # The Ray version of the cluster is the one the extra installs.
    pyproject = (ROOT / "pyproject.toml").read_text()
    major_minor = ".".join(doc["spec"]["rayClusterConfig"]["rayVersion"].split(".")[:2])
    assert f'ray = ["ray[serve]>={major_minor}' in pyproject


def test_kuberay_manifest_gives_each_generator_replica_a_gpu() -> None:
    doc = _manifest()
    app = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"][0]
    assert app["args"]["gpus_per_replica"] >= 1 and app["args"]["device"] == "cuda"
    (generator,) = [d for d in app["deployments"] if d["name"] == "Generator"]
    assert generator["ray_actor_options"]["num_gpus"] >= 1
    cluster = doc["spec"]["rayClusterConfig"]
    gpus = 0
    for group in cluster["workerGroupSpecs"]:
        for container in group["template"]["spec"]["containers"]:
            limits = container["resources"]["limits"]
            requests = container["resources"]["requests"]
            assert limits.get("nvidia.com/gpu") == requests.get("nvidia.com/gpu")
            gpus += int(limits.get("nvidia.com/gpu", 0)) * int(group["maxReplicas"])
    # Enough GPUs in the largest worker pool for the largest generator pool.
    assert gpus >= app["args"]["max_replicas"] * generator["ray_actor_options"]["num_gpus"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no model on the head
    for container in head["template"]["spec"]["containers"]:
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_USAGE_STATS_ENABLED"]["value"] == "0"
        assert "secretKeyRef" in env["RIFF_TOKEN"]["valueFrom"]  # never a literal token


def test_kuberay_args_build_the_application() -> None:
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install '.[ray]')")
    from protocols.http import ray_serve

    app = yaml.safe_load(_manifest()["spec"]["serveConfigV2"])["applications"][0]
    built = ray_serve.build_app({**app["args"], "token": "a-test-token"})
    assert built is not None
    with pytest.raises(Exception, match="unknown args: gpus"):
        ray_serve.build_app({**app["args"], "gpus": 1})
