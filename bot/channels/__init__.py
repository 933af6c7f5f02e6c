"""Channel adapters, registered by a stable name.

An adapter has an input half (provider payload -> `InboundMessage`) and an output half (reply
texts -> what the provider expects back). Nothing provider-specific gets past the adapter.
"""

from __future__ import annotations

from typing import Protocol


class ChannelAdapter(Protocol):
    """What every channel adapter offers the web layer and the CLI."""

    @property
    def name(self) -> str:
        """The registry key, e.g. "twilio"."""
        ...

    def render_reply(self, texts: list[str]) -> str:
        """The provider's body for an immediate answer made of `texts` (possibly none)."""
        ...


_REGISTRY: dict[str, ChannelAdapter] = {}


def register(adapter: ChannelAdapter) -> ChannelAdapter:
    """Add `adapter` to the registry under `adapter.name` and return it."""
    _REGISTRY[adapter.name] = adapter
    return adapter


def get_adapter(name: str) -> ChannelAdapter:
    """The adapter registered as `name`. Raises `KeyError` for an unknown name."""
    from bot.channels import console, twilio  # noqa: F401  (importing registers them)

    return _REGISTRY[name]
