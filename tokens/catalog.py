"""The economy catalog: intents and their prices, the free allowance, commands and token packs.

The catalog is one YAML file (`tokens/economy.yaml` by default, `ECONOMY_FILE` to override).
It is parsed and checked once into frozen dataclasses; nothing else in the project reads the
YAML. The defaults are those of shared/design/economy.md ("Default catalog").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from tokens.errors import CatalogError

DEFAULT_CATALOG_PATH = Path(__file__).with_name("economy.yaml")
MICRO_USD_PER_USD = 1_000_000
COMMAND_NAMES = ("balance", "buy", "more")


@dataclass(frozen=True)
class IntentSpec:
    """One priced intent of the catalog.

    Attributes:
        name: stable identifier, e.g. "meal_plan"; skills are registered under it.
        label: how a person reads it, e.g. "meal plan".
        price: tokens debited for one answer (positive integer).
        example: a message that selects this intent, shown in help and refusal texts.
        patterns: compiled regular expressions searched in the normalised message.
    """

    name: str
    label: str
    price: int
    example: str
    patterns: tuple[re.Pattern[str], ...]


@dataclass(frozen=True)
class Pack:
    """A token pack sold through a pay link.

    Attributes:
        code: stable identifier, e.g. "starter".
        name: display name, e.g. "Starter".
        price_cents: price in the currency's minor unit (Stripe's unit), e.g. 500.
        currency: ISO 4217 code in lower case, e.g. "usd".
        tokens: purchased tokens (bucket `paid`).
        bonus_tokens: bonus tokens, posted as their own entry (bucket `bonus`).
    """

    code: str
    name: str
    price_cents: int
    currency: str
    tokens: int
    bonus_tokens: int

    @property
    def total_tokens(self) -> int:
        """Purchased plus bonus tokens."""
        return self.tokens + self.bonus_tokens

    @property
    def price_display(self) -> str:
        """The price as a person reads it, e.g. "$5.00" (only USD gets a symbol)."""
        amount = Decimal(self.price_cents) / 100
        if self.currency == "usd":
            return f"${amount:.2f}"
        return f"{amount:.2f} {self.currency.upper()}"


@dataclass(frozen=True)
class Catalog:
    """The parsed economy catalog.

    Attributes:
        bot_name: the bot's name in replies.
        bot_description: one line on what the bot does.
        token_price_musd: list price of one token in µUSD (economy.md: $0.05 = 50,000 µUSD).
        free_monthly_allowance: tokens granted per person and calendar month (UTC).
        intents: priced intents in precedence order (first match wins).
        default_intent: the intent of a message that matches no pattern.
        commands: free command name ("balance", "buy", "more") -> normalised keywords.
        packs: token packs by code.
        default_pack: code of the pack offered in pay links.
        pay_link_ttl_seconds: lifetime of a pay link.
        hold_ttl_seconds: how long a hold may stay pending before it expires and releases
            its tokens (a crash between hold and capture charges nothing).
    """

    bot_name: str
    bot_description: str
    token_price_musd: int
    free_monthly_allowance: int
    intents: tuple[IntentSpec, ...]
    default_intent: str
    commands: Mapping[str, frozenset[str]]
    packs: Mapping[str, Pack]
    default_pack: str
    pay_link_ttl_seconds: int
    hold_ttl_seconds: int

    def intent(self, name: str) -> IntentSpec:
        """The intent called `name`. Raises `CatalogError` if there is none."""
        for spec in self.intents:
            if spec.name == name:
                return spec
        raise CatalogError(f"unknown intent {name!r}")

    def pack(self, code: str | None = None) -> Pack:
        """The pack `code`, or the default pack. Raises `CatalogError` if unknown."""
        try:
            return self.packs[code or self.default_pack]
        except KeyError:
            raise CatalogError(f"unknown pack {code!r}") from None


def normalise_command(text: str) -> str:
    """The form in which commands and keywords are compared.

    Upper case, accents dropped, all white space removed and final punctuation stripped, so
    " buy  tokens! " and "BUYTOKENS" compare equal, and "más" equals "MAS" (economy.md:
    commands match the whole message, case- and space-insensitively).
    """
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return re.sub(r"\s+", "", folded).upper().rstrip(".!?¡¿")


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read and check the economy catalog.

    Args:
        path: a YAML file; `None` means the shipped default (`tokens/economy.yaml`).

    Returns:
        The frozen `Catalog`.

    Raises:
        CatalogError: the file is missing or unreadable, or a field is absent, of the wrong type,
            out of range, or refers to an intent or pack that does not exist. The message names
            the file and the field.
    """
    source = Path(path) if path else DEFAULT_CATALOG_PATH
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"{source}: cannot read the economy catalog ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise CatalogError(f"{source}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise CatalogError(f"{source}: the catalog must be a mapping at the top level")
    try:
        return _parse(raw)
    except CatalogError as exc:
        raise CatalogError(f"{source}: {exc}") from None


def _parse(raw: dict[str, Any]) -> Catalog:
    bot = _mapping(raw, "bot")
    intents = tuple(_parse_intent(item, i) for i, item in enumerate(_list(raw, "intents")))
    names = [spec.name for spec in intents]
    if len(set(names)) != len(names):
        raise CatalogError("intents: names must be unique")
    default_intent = _str(raw, "default_intent")
    if default_intent not in names:
        raise CatalogError(f"default_intent: {default_intent!r} is not one of the intents")

    commands_raw = _mapping(raw, "commands")
    commands = {}
    for name in COMMAND_NAMES:
        words = commands_raw.get(name)
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            raise CatalogError(f"commands.{name}: a non-empty list of keywords is required")
        commands[name] = frozenset(normalise_command(w) for w in words)

    packs = {}
    for i, item in enumerate(_list(raw, "packs")):
        pack = _parse_pack(item, i)
        packs[pack.code] = pack
    default_pack = _str(raw, "default_pack")
    if default_pack not in packs:
        raise CatalogError(f"default_pack: {default_pack!r} is not one of the packs")

    try:
        price = Decimal(str(raw.get("token_list_price_usd")))
    except InvalidOperation:
        raise CatalogError(
            'token_list_price_usd: a decimal string such as "0.05" is required'
        ) from None
    token_price_musd = price * MICRO_USD_PER_USD
    if token_price_musd <= 0 or token_price_musd != token_price_musd.to_integral_value():
        raise CatalogError("token_list_price_usd: must be positive and a whole number of µUSD")

    return Catalog(
        bot_name=_str(bot, "name"),
        bot_description=_str(bot, "description"),
        token_price_musd=int(token_price_musd),
        free_monthly_allowance=_positive_int(raw, "free_monthly_allowance"),
        intents=intents,
        default_intent=default_intent,
        commands=commands,
        packs=packs,
        default_pack=default_pack,
        pay_link_ttl_seconds=_positive_int(raw, "pay_link_ttl_hours") * 3600,
        hold_ttl_seconds=_positive_int(raw, "hold_ttl_seconds"),
    )


def _parse_intent(item: Any, index: int) -> IntentSpec:
    where = f"intents[{index}]"
    if not isinstance(item, dict):
        raise CatalogError(f"{where}: must be a mapping")
    patterns = item.get("patterns", [])
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise CatalogError(f"{where}.patterns: must be a list of strings")
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise CatalogError(
                f"{where}.patterns: {pattern!r} is not a valid regex ({exc})"
            ) from None
    return IntentSpec(
        name=_str(item, "name", where),
        label=_str(item, "label", where),
        price=_positive_int(item, "price", where),
        example=_str(item, "example", where),
        patterns=tuple(compiled),
    )


def _parse_pack(item: Any, index: int) -> Pack:
    where = f"packs[{index}]"
    if not isinstance(item, dict):
        raise CatalogError(f"{where}: must be a mapping")
    bonus = item.get("bonus_tokens", 0)
    if type(bonus) is not int or bonus < 0:
        raise CatalogError(f"{where}.bonus_tokens: must be a non-negative integer")
    return Pack(
        code=_str(item, "code", where),
        name=_str(item, "name", where),
        price_cents=_positive_int(item, "price_cents", where),
        currency=_str(item, "currency", where).lower(),
        tokens=_positive_int(item, "tokens", where),
        bonus_tokens=bonus,
    )


def _mapping(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise CatalogError(f"{key}: a mapping is required")
    return value


def _list(raw: Mapping[str, Any], key: str) -> list[Any]:
    value = raw.get(key)
    if not isinstance(value, list) or not value:
        raise CatalogError(f"{key}: a non-empty list is required")
    return value


def _str(raw: Mapping[str, Any], key: str, where: str = "") -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(f"{where + '.' if where else ''}{key}: a non-empty string is required")
    return value.strip()


def _positive_int(raw: Mapping[str, Any], key: str, where: str = "") -> int:
    value = raw.get(key)
    # bool is an int in Python; a price of `true` is a typo, not one token.
    if type(value) is not int or value <= 0:
        raise CatalogError(f"{where + '.' if where else ''}{key}: a positive integer is required")
    return value
