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


def whole_number(value: object, file: str, field: str, *, minimum: int) -> int:
    """A field that must be a whole number of at least `minimum`, or the one clear error naming file and field."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SourceError(file, field, "must be a whole number")
    try:
        number = int(value.strip() if isinstance(value, str) else value)
    except ValueError:
        raise SourceError(file, field, f"{str(value)[:40]!r} is not a whole number") from None
    if number < minimum:
        raise SourceError(file, field, f"{number} is negative" if minimum == 0 else f"{number} must be at least "
                                                                                     f"{minimum}")
    return number
