"""What a user checks on a node after the containerd role ran (molecule.yml's three cases)."""

import tomllib

import pytest

from gvisor_testinfra import REPO

CONFIG = "/etc/containerd/config.toml"


@pytest.fixture(scope="module")
def case(host):
    return host.ansible.get_variables()["containerd_test_case"]


def test_containerd_is_installed_from_the_distribution(host):
    assert host.package("containerd").is_installed
    assert host.run("containerd --version").rc == 0


def test_existing_configuration_is_kept_byte_for_byte(host, case):
    if case != "missing":
        pytest.skip("this node had no configuration file")
    fixture = (REPO / "tests" / "fixtures" / "containerd" / "bookworm-v2.toml").read_text()
    assert host.file(CONFIG).content_string == fixture


def test_missing_configuration_is_created_from_containerds_defaults(host, case):
    if case == "missing":
        pytest.skip("this node had its own configuration file")
    config = host.file(CONFIG)
    assert config.user == "root" and config.group == "root" and config.mode == 0o644
    assert tomllib.loads(config.content_string) == tomllib.loads(host.check_output("containerd config default"))


def test_containerd_accepts_its_configuration(host):
    assert host.run("containerd --config %s config dump", CONFIG).rc == 0


def test_containerd_starts_at_boot(host):
    # systemctl answers from the unit files, also where systemd does not run.
    assert host.run("systemctl is-enabled containerd").stdout.strip() == "enabled"


def test_containerd_runs_where_systemd_runs_the_system(host, case):
    if case == "nosystemd":
        # An image build container: nothing was started, nothing failed.
        assert not host.file("/run/systemd/system").exists
        assert host.run("pgrep -x containerd").rc != 0
    else:
        assert host.run("systemctl is-active containerd").stdout.strip() == "active"
        assert host.run("ctr version").rc == 0


def test_containerd_was_restarted_after_its_configuration_was_written(host, case):
    if case != "noconfig":
        pytest.skip("containerd started with this configuration already")
    pid = host.check_output("systemctl show --property=MainPID --value containerd")
    running_for = int(host.check_output("ps -o etimes= -p %s", pid))
    written_ago = int(host.check_output("date +%s")) - int(host.check_output("stat --format=%%Y %s", CONFIG))
    assert running_for <= written_ago + 1
