"""``load_spec(paths)`` reads one or more spec files, checks every key and value, merges the
files (see :mod:`provision.spec.merge`, which also documents this project's ``replace`` /
``remove`` extension) and returns an :class:`ImageSpec`, or raises :class:`SpecError` listing
*every* problem at once, each with file, line, column and key path
(``services[2].binds[0]``). Nothing here touches the network; ``files`` sources are only
checked for existence."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from provision.errors import Problem, SpecError
from provision.spec.image import ImageSpec, ParsedFile, parse_spec_file
from provision.spec.merge import merge_parsed_files


def load_spec(paths: Sequence[str | os.PathLike[str]]) -> ImageSpec:
    """Parse, validate and merge the spec files; raise SpecError listing all problems."""
    problems: list[Problem] = []
    parsed_files: list[ParsedFile] = []
    if not paths:
        raise SpecError([Problem("-", 0, 0, "", "no spec file given")])
    for raw in paths:
        parsed, found = parse_spec_file(Path(raw))
        parsed_files.append(parsed)
        problems.extend(found)
    spec, merge_problems = merge_parsed_files(parsed_files)
    problems.extend(merge_problems)
    if problems:
        raise SpecError(problems, hint="fix the problems listed (file:line:column: key: what)")
    return spec
