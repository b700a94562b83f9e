"""How many models may be resident at once, and which one leaves first (least recently used, idle)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from mlserve.registry.served import ServedModel


@dataclass(frozen=True, slots=True)
class Budget:
    """A cap on resident models and on their artifact bytes; 0 means no cap."""

    max_models: int = 0
    max_bytes: int = 0

    @property
    def is_limited(self) -> bool:
        return self.max_models > 0 or self.max_bytes > 0

    def num_resident(self, models: Iterable[ServedModel]) -> int:
        return sum(1 for m in models if m.is_resident)

    def resident_bytes(self, models: Iterable[ServedModel]) -> int:
        return sum(m.resident_bytes for m in models)

    def has_room(self, models: Iterable[ServedModel], incoming: ServedModel, incoming_bytes: int = 0,
                 reserved: dict[str, int] | None = None) -> bool:
        """Would `incoming` fit beside what is resident and what other loads have reserved?"""
        if not self.is_limited:
            return True
        reserved = {k: v for k, v in (reserved or {}).items() if k != incoming.name}
        others = [m for m in models if m.is_resident and m.name != incoming.name and m.name not in reserved]
        count = len(others) + len(reserved) + 1
        size = sum(m.resident_bytes for m in others) + sum(reserved.values()) + incoming_bytes
        return (not self.max_models or count <= self.max_models) and (not self.max_bytes or size <= self.max_bytes)

    def victim(self, models: Iterable[ServedModel], incoming: ServedModel,
               reserved: dict[str, int] | None = None) -> ServedModel | None:
        """The least recently used resident model with nothing in flight and no transition running."""
        candidates = [
            m for m in models
            if m.is_resident and m.name != incoming.name and m.name not in (reserved or {})
            and m.is_idle and not m.lock.locked()
        ]
        return min(candidates, key=lambda m: m.last_used, default=None)
