"""The server role's bind and health-check addresses, rendered by Ansible.

A playbook on the controller loads the role's vars/main.yml with a given
server_bind_address and prints the two values that depend on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))

PLAYBOOK = """\
- name: Render the server role's addresses
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Load the role's variables
      ansible.builtin.include_vars:
        file: {vars_file}
    - name: Print the addresses
      ansible.builtin.debug:
        msg: "ADDRESSES {{{{ _server_bind }}}} {{{{ _server_health_host }}}}"
"""


@pytest.mark.parametrize(
    ("bind_address", "bind", "health_host"),
    [
        ("0.0.0.0", "0.0.0.0:8080", "127.0.0.1"),
        ("::", "[::]:8080", "[::1]"),
        ("192.0.2.10", "192.0.2.10:8080", "192.0.2.10"),
        ("2001:db8::10", "[2001:db8::10]:8080", "[2001:db8::10]"),
        ("[::]", "[::]:8080", "[::1]"),
        ("[2001:db8::10]", "[2001:db8::10]:8080", "[2001:db8::10]"),
    ],
)
def test_bind_and_health_host(
    tmp_path: Path, bind_address: str, bind: str, health_host: str
) -> None:
    playbook = tmp_path / "addresses.yml"
    vars_file = REPO / "roles" / "server" / "vars" / "main.yml"
    playbook.write_text(PLAYBOOK.format(vars_file=vars_file))
    extra_vars = {"server_bind_address": bind_address, "server_port": 8080}

    result = subprocess.run(
        [
            ANSIBLE_PLAYBOOK,
            "--inventory",
            "localhost,",
            "--connection",
            "local",
            "--extra-vars",
            json.dumps(extra_vars),
            str(playbook),
        ],
        cwd=tmp_path,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ADDRESSES {bind} {health_host}" in result.stdout
