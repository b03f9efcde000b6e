"""Error types. Domain code raises these; only the CLI formats them and picks an exit code."""

from __future__ import annotations


class BootgenError(Exception):
    """A failure the user can act on: `location` says where, `hint` how to fix it."""

    exit_code = 1

    def __init__(self, message: str, *, location: str = "", hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.location = location
        self.hint = hint

    def format(self) -> str:
        where = f"{self.location}: " if self.location else ""
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"error: {where}{self.message}{hint}"


class UsageError(BootgenError):
    """Bad command-line usage or bad host description: exit code 2."""

    exit_code = 2


class DescriptionError(UsageError):
    """One or more problems in a host description; all of them are collected before raising."""

    def __init__(self, problems: list[BootgenError]) -> None:
        super().__init__(problems[0].message if problems else "invalid description")
        self.problems = problems

    def format(self) -> str:
        return "\n".join(p.format() for p in self.problems)


class BuildError(BootgenError):
    """The image could not be built (missing file, library, module...)."""


class CommandError(BuildError):
    """An external command failed; the message names it and carries the tail of its stderr."""


class BootError(BootgenError):
    """A QEMU boot did not reach the expected state."""
