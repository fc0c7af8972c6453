"""docker-compose.yml: valid against the compose specification, and consistent with the node's settings,
its command line and the Orthanc configuration (no Docker engine runs here)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from neuronova.cli import build_parser
from neuronova.config import ENV_PREFIX, Settings
from neuronova.outbox import parse_destination

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return YAML(typ="safe").load(COMPOSE.read_text())


def test_compose_file_matches_the_specification() -> None:
    exe = shutil.which("check-jsonschema") or str(Path(__import__("sys").executable).parent / "check-jsonschema")
    proc = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _args(service: dict) -> object:
    return build_parser().parse_args(service["command"])


def test_node_and_worker_commands_parse_and_agree(compose: dict) -> None:
    node, worker = compose["services"]["neuronova"], compose["services"]["worker"]
    n, w = _args(node), _args(worker)
    assert (n.command, w.command) == ("serve", "worker")
    assert n.queue_url == w.queue_url and n.queue_url.startswith("redis://redis:")
    assert n.data_dir == w.data_dir
    # the same named volume holds the data directory of both (workers read inputs, write results)
    node_vol = {v.split(":")[1]: v.split(":")[0] for v in node["volumes"]}
    worker_vol = {v.split(":")[1]: v.split(":")[0] for v in worker["volumes"]}
    assert node_vol[str(n.data_dir)] == worker_vol[str(w.data_dir)]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def test_environment_names_real_settings_with_valid_values(compose: dict) -> None:
    for name in ("neuronova", "worker"):
        env = {k: str(v) for k, v in compose["services"][name]["environment"].items()}
        for key in env:
            assert key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX):].lower() in Settings.model_fields, key
        env = {k: ("x" * 40 if "${" in v else v) for k, v in env.items()}
        Settings.load({"data_dir": "/data"}, environ=env)


def test_ports_agree_with_the_node_and_orthanc(compose: dict) -> None:
    node = compose["services"]["neuronova"]
    args = _args(node)
    published = {p.split(":")[1] for p in node["ports"]}
    assert {str(args.http_port), str(args.dimse_port)} == published
    assert args.http_host == "0.0.0.0"

    orthanc_cfg = json.loads((ROOT / "orthanc" / "orthanc.json").read_text())
    ae, host, port = orthanc_cfg["DicomModalities"]["neuronova"]
    assert (ae, host, port) == (args.ae_title, "neuronova", args.dimse_port)
    dest = parse_destination(args.destinations[0])
    assert (dest.ae_title, dest.host, dest.port) == (orthanc_cfg["DicomAet"], "orthanc", orthanc_cfg["DicomPort"])
    orthanc_ports = {p.split(":")[1] for p in compose["services"]["orthanc"]["ports"]}
    assert {str(orthanc_cfg["DicomPort"]), str(orthanc_cfg["HttpPort"])} == orthanc_ports
    allowed = compose["services"]["neuronova"]["environment"]["NEURONOVA_ALLOWED_AES"]
    assert orthanc_cfg["DicomAet"] in allowed.split(",")


def test_lua_script_is_mounted_where_orthanc_looks(compose: dict) -> None:
    orthanc_cfg = json.loads((ROOT / "orthanc" / "orthanc.json").read_text())
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["orthanc"]["volumes"]}
    for script in orthanc_cfg["LuaScripts"]:
        assert (ROOT / mounts[script]).resolve() == (ROOT / "orthanc" / "autoroute.lua").resolve()
    assert re.search(r'NODE_MODALITY = "neuronova"', (ROOT / "orthanc" / "autoroute.lua").read_text())
