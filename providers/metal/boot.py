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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.providers.metal.images import read_boot_image
from provision.providers.metal.lab import Group, Lab, Profile, normalise_mac
from provision.providers.metal.reservations import Reservation, read_reservations

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


def answer_ipxe(
    lab: Lab, query: Mapping[str, str], base_url: str, state: Path | None = None
) -> tuple[str, str]:
    """(the script, what answered) for one ``/ipxe`` request: a cluster's reservation first (it
    boots the image its group runs, with its machine name), then the lab's groups, then the
    default."""
    facts = Facts.from_query(query, lab)
    efi = query.get("platform") == "efi"  # iPXE's ${platform}: pcbios or efi
    reservation = find_reservation(state, facts)
    if reservation is not None and reservation.wiping in lab.profiles:
        profile = lab.profiles[reservation.wiping]
        return render_ipxe(
            profile, base_url, efi=efi
        ), f"wipe {reservation.machine} ({profile.name})"
    if reservation is not None and state is not None:
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
    group = select_group(lab, facts)
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
