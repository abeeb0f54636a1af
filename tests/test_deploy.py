"""deploy/: the example configurations load, the systemd unit and the compose file are accepted."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dicomcr.config import ConfigError, load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


@pytest.mark.parametrize("name", ["node.yaml", "compose-node.yaml", "compose-scaleout-node.yaml"])
def test_the_example_configurations_load(name: str) -> None:
    config = load_config(DEPLOY / name)
    assert config.node.port == 11112 and config.forward.to in config.destinations


@pytest.mark.parametrize(("destination", "said"), [
    ("{host: 127.0.0.1, port: 4242}", "destinations.pacs.ae_title: Field required; a destination "
     "is a DICOM peer (host, port, ae_title), a folder (folder) or a DICOMweb service "
     "(dicomweb)"),
    ("{folder: /srv/out, port: 4242}", "destinations.pacs.port: Extra inputs are not permitted "
     "(got 4242); a destination is a DICOM peer (host, port, ae_title), a folder (folder) or a "
     "DICOMweb service (dicomweb)"),
    ("{host: 127.0.0.1, port: 99999, ae_title: PACS}", "destinations.pacs.port: Input should be "
     "less than or equal to 65535 (got 99999)"),
    ("3", "destinations.pacs: a destination is a DICOM peer (host, port, ae_title), a folder "
     "(folder) or a DICOMweb service (dicomweb) (got 3)"),
])
def test_a_bad_destination_is_one_line_about_its_own_kind(tmp_path: Path, destination: str,
                                                          said: str) -> None:
    """Not pydantic's errors for both kinds of the union (FolderDestination, DicomDestination)."""
    path = tmp_path / "node.yaml"
    path.write_text(f"destinations:\n  pacs: {destination}\nforward: {{to: pacs}}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(refused.value) == f"{path}: {said}"


def test_the_systemd_unit_is_accepted(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here")
    # The unit names the installed path; point it at this checkout's console script to verify.
    unit = (DEPLOY / "dicomcr.service").read_text()
    assert "ExecStart=/opt/dicomcr/.venv/bin/dicomcr serve --config /etc/dicomcr/node.yaml" in unit
    here = Path(sys.executable).with_name("dicomcr")
    (tmp_path / "dicomcr.service").write_text(unit.replace("/opt/dicomcr/.venv/bin/dicomcr",
                                                           str(here)))
    run = subprocess.run([tool, "verify", str(tmp_path / "dicomcr.service")],
                         capture_output=True, text=True, timeout=60)
    complaints = [line for line in (run.stdout + run.stderr).splitlines()
                  if "dicomcr.service" in line]
    assert run.returncode == 0 and complaints == [], run.stdout + run.stderr


def _docker_compose_config(name: str) -> None:
    """`docker compose config` accepts the file, where the compose plugin exists (else skip)."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True,
                                        timeout=60).returncode != 0:
        pytest.skip("the docker compose plugin is not installed here")
    run = subprocess.run([docker, "compose", "-f", str(DEPLOY / name), "config"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def test_the_compose_file(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(compose["services"]) == {"orthanc", "dicomcr"}
    build = compose["services"]["dicomcr"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    mounted = compose["services"]["dicomcr"]["volumes"][0].split(":")[0]
    assert (DEPLOY / mounted).is_file()
    _docker_compose_config("compose.yaml")


def test_the_scaleout_compose_file() -> None:
    """RabbitMQ, the node, two transcoding workers and a CUDA inference worker beside Orthanc:
    every dicomcr container reads one node.yaml whose queue is the rabbitmq service, as its
    user, and mounts one storage volume at the node's storage path."""
    compose = yaml.safe_load((DEPLOY / "compose-scaleout.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"rabbitmq", "orthanc", "dicomcr", "transcode-worker", "infer-worker"}
    dicomcr = {name: services[name] for name in ("dicomcr", "transcode-worker", "infer-worker")}
    for service in dicomcr.values():
        build = service["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
        assert service["depends_on"]["rabbitmq"] == {"condition": "service_healthy"}
    assert dicomcr["infer-worker"]["build"]["dockerfile"] == "deploy/Dockerfile.cuda"
    assert dicomcr["transcode-worker"]["deploy"]["replicas"] == 2
    for name, kind in (("transcode-worker", "transcode"), ("infer-worker", "infer")):
        assert dicomcr[name]["command"] == ["worker", "--config", "/etc/dicomcr/node.yaml",
                                            "--queues", kind]

    mounts = {name: dict(reversed(v.split(":")[:2]) for v in service["volumes"])
              for name, service in dicomcr.items()}
    config_file = mounts["dicomcr"]["/etc/dicomcr/node.yaml"]
    config = load_config(DEPLOY / config_file)
    storage = mounts["dicomcr"][str(config.node.storage)]
    assert storage in compose["volumes"]
    for mounted in mounts.values():
        assert mounted["/etc/dicomcr/node.yaml"] == config_file
        assert mounted[str(config.node.storage)] == storage

    broker = services["rabbitmq"]["environment"]
    user, password, vhost = (broker[f"RABBITMQ_DEFAULT_{k}"] for k in ("USER", "PASS", "VHOST"))
    assert config.node.queue == f"amqp://{user}:{password}@rabbitmq:5672/{vhost}"
    (conf,) = [v for v in services["rabbitmq"]["volumes"] if v.startswith("./rabbitmq.conf:")]
    assert conf.split(":")[1].startswith("/etc/rabbitmq/conf.d/")
    settings = dict(line.split(" = ") for line in (DEPLOY / "rabbitmq.conf").read_text()
                    .splitlines() if line and not line.startswith("#"))
    assert int(settings["consumer_timeout"]) >= 30 * 60 * 1000
    _docker_compose_config("compose-scaleout.yaml")
