"""Named populations for `flask simulate --preset NAME`: a persona mix and propensity
overrides (chances between 0 and 1, as `sim.personas.with_propensities` reads them).
Explicit --mix and --*-propensity options override a preset's values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    """A population: `mix` ("persona=share,...") and `propensities` (propensity name ->
    "P" or "persona=P,...", as the --*-propensity options take)."""

    name: str
    description: str
    mix: str
    propensities: Mapping[str, str] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    preset.name: preset for preset in (
        Preset("launch", "The first month after launch: mostly new, casual people trying it, "
               "a few heavy users, Spanish speakers, a few refunds.",
               "casual=0.7,active=0.2,power=0.05,abusive=0.05",
               {"spanish": "0.2", "refund": "0.03", "dispute": "0.005",
                "auto_topup": "active=0.1,power=0.2"}),
        Preset("steady", "A settled month: the default mix, auto top-up turned on by some "
               "buyers, refunds and disputes at card-industry rates.",
               "casual=0.6,active=0.25,power=0.1,abusive=0.05",
               {"spanish": "0.15", "refund": "0.02", "dispute": "0.005",
                "auto_topup": "active=0.3,power=0.5"}),
        Preset("abuse-wave", "A month under attack: a fifth of the people flood priced "
               "requests, flood HELP, toggle STOP/START or probe the rate limits.",
               "casual=0.5,active=0.2,power=0.1,abusive=0.08,flooder=0.05,toggler=0.04,"
               "prober=0.03",
               {"spanish": "0.15", "refund": "0.02", "dispute": "0.01"}),
    )
}
