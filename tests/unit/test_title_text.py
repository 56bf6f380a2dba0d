"""The titles `ps` shows for goodsd's processes."""

from __future__ import annotations

import os

from goodsd.proctitle import child_title, master_title


def test_the_master_names_its_config_file_by_absolute_path() -> None:
    assert master_title("/etc/goodsd.yaml") == "goodsd: master -c /etc/goodsd.yaml"
    relative = master_title("conf/goodsd.yaml")
    assert relative == f"goodsd: master -c {os.getcwd()}/conf/goodsd.yaml"


def test_a_child_names_its_role_slot_and_queue() -> None:
    assert child_title("consumer", 2, "goods2") == "goodsd: consumer 2 [goods2]"
    assert child_title("producer", 0, "goods2") == "goodsd: producer 0 [goods2]"
