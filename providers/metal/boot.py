"""What a machine that network-boots is told: the group it belongs to (matchbox's rule), the
iPXE script of that group's profile, and its metadata.

A request carries the facts iPXE knows (``mac``, ``uuid``, ``hostname``, ``serial``); the
inventory adds the labels of the machine that owns the MAC. A group matches when every one of
its selectors equals a fact; of the matching groups the one with the most selectors wins, ties
broken by name, so the answer is deterministic. A machine no group matches gets the lab's
default: ``exit`` (iPXE goes on to the next boot device, the local disk) or a named profile (a
discovery image) - never some other group's profile.

A machine a cluster reserved boots its group's image with ``provision.hostname=NAME`` and, when
the lab gives it a local ``disk`` and a disk image was published, ``provision.install=URL
provision.disk=DEV`` (init installs the image there); while it is wiped (its destroy, or a
create taking a machine another group released) it boots that wipe profile instead.

The machines that have metadata (a reserved machine: its hostname and image; a lab group's
machine when the group declares ``metadata``) are told where it is:
``provision.metadata=BASE/v1/metadata/MAC`` (the URL this server is reached at, as for the other
boot URLs), which the image's metadata component reads as it reads a cloud's service.

``BootAnswers`` is one lab generation's view for the server: the groups indexed by a selector
entry (a request checks only the groups that can match it, not every group of the lab), the
reservations re-read only when their file changes, and the rendered scripts and metadata
cached (bounded); a reload builds a new one and swaps it with the lab.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from provision.providers.metal.images import read_boot_image
from provision.providers.metal.lab import Group, Lab, Profile, normalise_mac
from provision.providers.metal.reservations import FILE, Reservation, read_reservations

CHAIN_SCRIPT = """#!ipxe
chain ipxe?mac=${mac:hexhyp}&uuid=${uuid}&hostname=${hostname}&serial=${serial}&platform=${platform}
"""


@dataclass(frozen=True)
class Facts:
    """What a booting machine said about itself, plus its inventory labels."""

    values: Mapping[str, str]

    @classmethod
    def from_query(cls, query: Mapping[str, str], lab: Lab) -> Facts:
        values = {k: v for k, v in query.items() if v}
        if "mac" in values:
            values["mac"] = normalise_mac(values["mac"])
            machine = lab.machine_by_mac(values["mac"])
            if machine is not None:
                values = {**machine.labels, **values, "machine": machine.name}
        if "uuid" in values:
            values["uuid"] = values["uuid"].lower()
        return cls(values)


def select_group(lab: Lab, facts: Facts) -> Group | None:
    """The group whose every selector matches, most selectors first, then by name."""
    matching = [
        g
        for g in lab.groups
        if g.selector and all(facts.values.get(k) == v for k, v in g.selector.items())
    ]
    if not matching:
        return None
    return sorted(matching, key=lambda g: (-len(g.selector), g.name))[0]


def render_ipxe(profile: Profile, base_url: str, *, efi: bool) -> str:
    """The iPXE script that boots ``profile`` from ``base_url`` (kernel, initrds, command line).
    Under EFI, iPXE needs ``initrd=NAME`` on the command line or the initrd is lost."""
    lines = ["#!ipxe"]
    names = []
    for index, path in enumerate(profile.initrd):
        name = f"initrd{index}.img" if len(profile.initrd) > 1 else "initrd.img"
        names.append(name)
        lines.append(f"initrd --name {name} {base_url}/files/{path}")
    cmdline = profile.cmdline
    if efi:
        cmdline = " ".join([*(f"initrd={n}" for n in names), cmdline]).strip()
    lines.append(f"kernel {base_url}/files/{profile.kernel} {cmdline}".rstrip())
    lines.append("boot")
    return "\n".join(lines) + "\n"


def find_reservation(state: Path | None, facts: Facts) -> Reservation | None:
    """The reservation of the machine that asked (a cluster's machine), if any."""
    machine = facts.values.get("machine")
    if state is None or machine is None:
        return None
    found = read_reservations(state).get(machine)
    return None if found is None or found.released else found


def reservation_metadata(reservation: Reservation) -> dict[str, Any]:
    """``/v1/metadata/MAC`` of a reserved machine: its names, image and cluster, and its group's
    ``userData`` and ``sshKeys`` when it declares them."""
    metadata: dict[str, Any] = {
        "machine": reservation.machine,
        "hostname": reservation.name or reservation.machine,
        "image": reservation.image,
        "cluster": reservation.tags.get("provision-cluster"),
    }
    if reservation.user_data:
        metadata["userData"] = reservation.user_data
    if reservation.ssh_keys:
        metadata["sshKeys"] = list(reservation.ssh_keys)
    return metadata


def metadata_argument(facts: Facts, base_url: str) -> str:
    """``provision.metadata=URL``: where the booted machine reads its metadata (none without a
    MAC, which names the machine there)."""
    mac = facts.values.get("mac", "")
    return f"provision.metadata={base_url}/v1/metadata/{mac}" if mac else ""


def install_arguments(reservation: Reservation, lab: Lab, facts: Facts, base_url: str) -> str:
    """What asks init to install the image onto the machine's local disk (none without one):
    ``provision.install=URL provision.disk=DEV provision.mac=MAC``."""
    machine = next((m for m in lab.machines if m.name == reservation.machine), None)
    if not reservation.install or machine is None or not machine.disk:
        return ""
    mac = facts.values.get("mac", "")
    return (
        f"provision.install={base_url}/files/{reservation.install} provision.disk={machine.disk}"
        + (f" provision.mac={mac}" if mac else "")
    )


def answer_reservation(
    state: Path, reservation: Reservation, lab: Lab, facts: Facts, base_url: str, *, efi: bool
) -> tuple[str, str]:
    """(the script, what answered) for a cluster's machine: its wipe profile while it is wiped,
    else the image its group runs, booted with its machine name (and the install arguments when
    it has a local disk)."""
    if reservation.wiping in lab.profiles:
        profile = lab.profiles[reservation.wiping]
        return render_ipxe(
            profile, base_url, efi=efi
        ), f"wipe {reservation.machine} ({profile.name})"
    image = read_boot_image(state, reservation.image)
    if image is None:
        return (
            "#!ipxe\necho provision: the image of this machine is not published\nexit\n",
            f"reservation {reservation.machine}: image {reservation.image} missing",
        )
    hostname = f"provision.hostname={reservation.name or reservation.machine}"
    install = install_arguments(reservation, lab, facts, base_url)
    metadata = metadata_argument(facts, base_url)
    cmdline = " ".join(part for part in (image.cmdline, hostname, install, metadata) if part)
    profile = Profile(reservation.machine, image.kernel, image.initrd, cmdline)
    return render_ipxe(
        profile, base_url, efi=efi
    ), f"reservation {reservation.machine} ({reservation.image[:19]})"


def answer_group(
    lab: Lab, group: Group | None, facts: Facts, base_url: str, *, efi: bool
) -> tuple[str, str]:
    """(the script, what answered) for a machine of ``group`` (told where its metadata is when
    the group declares some), or the lab's default."""
    if group is not None:
        profile = lab.profiles[group.profile]
        if group.metadata and (metadata := metadata_argument(facts, base_url)):
            cmdline = " ".join(part for part in (profile.cmdline, metadata) if part)
            profile = Profile(profile.name, profile.kernel, profile.initrd, cmdline)
        return render_ipxe(profile, base_url, efi=efi), f"group {group.name}"
    if lab.default == "exit":
        return (
            "#!ipxe\necho provision: no group for this machine, booting the next device\nexit\n",
            "default exit",
        )
    return render_ipxe(lab.profiles[lab.default], base_url, efi=efi), f"default {lab.default}"


def answer_ipxe(
    lab: Lab, query: Mapping[str, str], base_url: str, state: Path | None = None
) -> tuple[str, str]:
    """(the script, what answered) for one ``/ipxe`` request: a cluster's reservation first (it
    boots the image its group runs, with its machine name), then the lab's groups, then the
    default. (Uncached; the server answers through ``BootAnswers``.)"""
    facts = Facts.from_query(query, lab)
    efi = query.get("platform") == "efi"  # iPXE's ${platform}: pcbios or efi
    reservation = find_reservation(state, facts)
    if reservation is not None and state is not None:
        return answer_reservation(state, reservation, lab, facts, base_url, efi=efi)
    return answer_group(lab, select_group(lab, facts), facts, base_url, efi=efi)


class GroupIndex:
    """The lab's groups by one of their selector entries (the first by key): a group matches
    only facts that hold that entry, so only the groups under the facts' own entries are checked.
    Answers as ``select_group`` does."""

    def __init__(self, groups: tuple[Group, ...]) -> None:
        self._by_entry: dict[tuple[str, str], list[Group]] = {}
        for group in groups:
            if group.selector:
                anchor = min(group.selector.items())
                self._by_entry.setdefault(anchor, []).append(group)

    def select(self, facts: Facts) -> Group | None:
        best: Group | None = None
        values = facts.values
        for entry in values.items():
            for group in self._by_entry.get(entry, ()):
                if all(values.get(k) == v for k, v in group.selector.items()) and (
                    best is None
                    or (-len(group.selector), group.name) < (-len(best.selector), best.name)
                ):
                    best = group
        return best


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


class BootAnswers:
    """What the server answers for one lab generation (see the module's text). Caches hold at
    most ``max_cached`` entries each (cleared when full: a client inventing query strings or
    Host headers cannot grow them), and are dropped when the reservations file changes."""

    def __init__(self, lab: Lab, state: Path | None = None, max_cached: int = 8192) -> None:
        self.lab = lab
        self.state = state
        self.groups = GroupIndex(lab.groups)
        self.max_cached = max_cached
        self._reservations: dict[str, Reservation] = {}
        self._reservations_version: tuple[int, int, int] | None = None
        self._scripts: dict[tuple[str, str], tuple[bytes, str, str]] = {}
        self._metadata: dict[str, tuple[int, bytes]] = {}
        self._listings: dict[str, bytes] = {}

    def _check_reservations(self) -> None:
        """Re-read the reservations when their file changed (one stat a request)."""
        if self.state is None:
            return
        try:
            st = os.stat(self.state / FILE)
            version = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            version = (0, 0, 0)
        if version != self._reservations_version:
            self._reservations = read_reservations(self.state) if version != (0, 0, 0) else {}
            self._reservations_version = version
            self._scripts.clear()
            self._metadata.clear()

    def reservation(self, facts: Facts) -> Reservation | None:
        """As ``find_reservation``: the machine's reservation, unless it was released."""
        machine = facts.values.get("machine")
        found = None if machine is None else self._reservations.get(machine)
        return None if found is None or found.released else found

    def ipxe(self, query_string: str, base_url: str) -> tuple[bytes, str, str]:
        """(the script, what answered, the MAC asked for) for ``/ipxe?QUERY_STRING``."""
        self._check_reservations()
        key = (query_string, base_url)
        cached = self._scripts.get(key)
        if cached is not None:
            return cached
        query = {k: v[0] for k, v in parse_qs(query_string).items()}
        script, answer, final = self._answer_ipxe(query, base_url)
        result = (script.encode(), answer, normalise_mac(query.get("mac", "")))
        if final:
            if len(self._scripts) >= self.max_cached:
                self._scripts.clear()
            self._scripts[key] = result
        return result

    def _answer_ipxe(self, query: Mapping[str, str], base_url: str) -> tuple[str, str, bool]:
        """(the script, what answered, whether it may be cached: not while a reserved
        machine's image is still to be published)."""
        facts = Facts.from_query(query, self.lab)
        efi = query.get("platform") == "efi"
        reservation = self.reservation(facts)
        if reservation is not None and self.state is not None:
            script, answer = answer_reservation(
                self.state, reservation, self.lab, facts, base_url, efi=efi
            )
            final = (
                reservation.wiping in self.lab.profiles
                or read_boot_image(self.state, reservation.image) is not None
            )
            return script, answer, final
        group = self.groups.select(facts)
        return (*answer_group(self.lab, group, facts, base_url, efi=efi), True)

    def metadata(self, mac: str) -> tuple[int, bytes]:
        """(the status, the JSON body) for ``/v1/metadata/MAC``."""
        self._check_reservations()
        cached = self._metadata.get(mac)
        if cached is not None:
            return cached
        facts = Facts.from_query({"mac": mac}, self.lab)
        reservation = self.reservation(facts)
        group = self.groups.select(facts)
        if reservation is not None:
            result = 200, _json(reservation_metadata(reservation))
        elif group is None:
            result = 404, _json({"error": "no group for this machine"})
        else:
            result = (
                200,
                _json(
                    {"group": group.name, "machine": facts.values.get("machine"), **group.metadata}
                ),
            )
        if len(self._metadata) >= self.max_cached:
            self._metadata.clear()
        self._metadata[mac] = result
        return result

    def listing(self, name: str) -> bytes:
        """The JSON of ``/v1/machines``, ``/v1/profiles`` or ``/v1/groups`` (once a generation)."""
        cached = self._listings.get(name)
        if cached is None:
            cached = self._listings[name] = _json(_LISTINGS[name](self.lab))
        return cached


_LISTINGS: dict[str, Any] = {
    "machines": lambda lab: [
        asdict(m) | {"bmc": ({"driver": m.bmc.driver, "address": m.bmc.address} if m.bmc else None)}
        for m in lab.machines
    ],
    "profiles": lambda lab: {name: asdict(p) for name, p in lab.profiles.items()},
    "groups": lambda lab: [
        {"name": g.name, "profile": g.profile, "selector": dict(g.selector)} for g in lab.groups
    ],
}
