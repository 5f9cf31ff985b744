"""The agent every image runs (pkg/agent): what it answers on its port, read over HTTP. Used by
the qemu provider's health probe, ``provision up``'s status and the boot tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import requests

AGENT_PORT = 7080


@dataclass(frozen=True)
class AgentStatus:
    """What a machine's agent answers on its port (GET /)."""

    digest: str
    hostname: str
    uptime: float
    services: Mapping[str, str]  # name -> running | restarting | exited | starting


def read_agent(host: str, port: int, timeout: float = 2.0) -> AgentStatus | None:
    """The agent's status, or None when it does not answer (yet) with its JSON."""
    try:
        response = requests.get(f"http://{host}:{port}/", timeout=timeout)
        body = response.json()
    except (requests.RequestException, ValueError):
        return None
    if not isinstance(body, dict) or not response.ok:
        return None
    services = body.get("services")
    states = {
        str(k): str(v.get("state", "?")) if isinstance(v, dict) else str(v)
        for k, v in (services.items() if isinstance(services, dict) else ())
    }
    uptime = body.get("uptime", 0)
    return AgentStatus(
        str(body.get("digest", "")),
        str(body.get("hostname", "")),
        float(uptime) if isinstance(uptime, int | float) else 0.0,
        states,
    )
