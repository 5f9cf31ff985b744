"""The user data a cloud machine gets: one JSON tree that the image's metadata component
(pkg/metadata) expands into ``/run/config``, whichever metadata service delivers it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def user_data_tree(hostname: str, user_data: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """``hostname`` (the machine's name, which wins over one in the group's shared user data)
    plus the group's user data: a tree as given (or text that is a JSON object), other text as
    the file ``userdata``, where the component puts plain user data too."""
    tree: dict[str, Any] = {}
    if isinstance(user_data, Mapping):
        tree.update(user_data)
    elif isinstance(user_data, str):
        try:
            parsed = json.loads(user_data)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            tree.update(parsed)
        else:
            tree["userdata"] = {"content": user_data}
    tree["hostname"] = {"content": hostname}
    return tree
