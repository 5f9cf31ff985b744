"""The user data tree every cloud target hands its machines: the group's tree (given as a
mapping or as JSON text), other text as the file ``userdata``, and the machine's own hostname
over any the group's shared user data names."""

from __future__ import annotations

from provision.user_data import user_data_tree


def test_a_tree_given_as_a_mapping_or_as_json_text_is_kept_and_the_hostname_added() -> None:
    ssh = {"ssh": {"entries": {"authorized_keys": {"content": "k"}}}}
    expected = {**ssh, "hostname": {"content": "web-1"}}
    assert user_data_tree("web-1", ssh) == expected
    text = '{"ssh": {"entries": {"authorized_keys": {"content": "k"}}}}'
    assert user_data_tree("web-1", text) == expected


def test_other_text_becomes_the_userdata_file_and_none_only_the_hostname() -> None:
    assert user_data_tree("m", "#!/bin/sh\necho hi\n") == {
        "userdata": {"content": "#!/bin/sh\necho hi\n"},
        "hostname": {"content": "m"},
    }
    assert user_data_tree("m", "[1, 2]") == {  # JSON, but not a tree
        "userdata": {"content": "[1, 2]"},
        "hostname": {"content": "m"},
    }
    assert user_data_tree("m", None) == {"hostname": {"content": "m"}}


def test_the_machines_hostname_wins_and_the_groups_mapping_is_not_changed() -> None:
    shared = {"hostname": {"content": "x"}}
    assert user_data_tree("m", shared)["hostname"] == {"content": "m"}
    assert shared == {"hostname": {"content": "x"}}
