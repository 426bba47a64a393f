"""The one error a foreign file can cause: it names the file and the field that is wrong."""

from __future__ import annotations

from virtfleet.errors import InvalidSpec


class SourceError(InvalidSpec):
    """A file being imported is malformed, truncated, unsupported or hostile."""

    def __init__(self, file: str, field: str, problem: str) -> None:
        super().__init__(field, problem)
        self.file = file
        self.message = f"{file}: {field}: {problem}"
        self.args = (self.message,)

    def details(self) -> dict[str, object]:
        return {"field": self.field, "file": self.file}
