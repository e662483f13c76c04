"""A problem with the user's input: the key, the value, what is wrong, and the fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict


@dataclass(frozen=True)
class Problem:
    key: str
    value: Any
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}: {self.message}. Fix: {self.fix}"

    def to_dict(self) -> Dict[str, Any]:
        """As manifests and plan records hold it: the fields, and the one-line text."""
        return asdict(self) | {"text": str(self)}
