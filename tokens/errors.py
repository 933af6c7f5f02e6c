"""Typed errors of the economy domain, all under one root, `TokensError`.

Each error names the rule it protects, so that a caller can tell a person (or an operator)
exactly what was refused and why.
"""

from __future__ import annotations


class TokensError(Exception):
    """Root of every error raised by the `tokens` package."""


class CatalogError(TokensError):
    """The economy catalog (YAML) is missing, malformed or inconsistent.

    Protects: prices, allowances and packs come only from a catalog that was checked at load
    time, never from a half-read file.
    """


class UnknownAccount(TokensError):
    """An operation named an account id that does not exist."""


class InsufficientTokens(TokensError):
    """A debit asked for more tokens than the account's available balance.

    Protects: the available balance never goes below zero (docs/economy.md, Ledger). Carries the
    requested amount and the balance at the time of the refusal, both in tokens.
    """

    def __init__(self, requested: int, available: int) -> None:
        super().__init__(f"{requested} tokens requested, {available} available")
        self.requested = requested
        self.available = available


class InvalidAmount(TokensError):
    """A ledger operation was given a zero, negative or non-integer token amount.

    Protects: tokens are positive integers at the API; the sign of an entry comes from its kind.
    """


class PayLinkNotFound(TokensError):
    """No pay link has this token (docs/payments.md: unknown tokens get a friendly 404)."""


class PayLinkExpired(TokensError):
    """The pay link exists but its expiry has passed (docs/payments.md: default 72 h; 410)."""


class AccountLinkNotFound(TokensError):
    """No account link has this token (docs/account.md, "The link": a clear 404 page)."""


class AccountLinkExpired(TokensError):
    """The account link exists but its 15 minutes have passed (docs/account.md, "The link":
    a clear 410 page that says to text ACCOUNT again)."""


class LedgerInvariantBroken(TokensError):
    """The cached balance disagrees with the sum of the entries.

    Protects: balance = sum of entries (docs/economy.md, Ledger). Raised instead of posting a debit
    that the buckets cannot cover; the transaction must be rolled back and an operator told.
    """


class UnknownEntry(TokensError):
    """An operation named a hold or a credit entry that does not exist."""


class HoldNotPending(TokensError):
    """A capture or void named a hold that is no longer pending.

    Protects: a hold settles once (pending -> captured | voided | expired); a late capture of
    an expired hold cannot charge tokens that were already released.
    """


class TokensHeld(TokensError):
    """A clawback would take tokens that pending holds reserve; retry once they settle.

    Protects: a hold is never left uncovered (held <= posted), and a clawback is never cut
    short, so each clawback key takes its whole amount once (holds settle within their TTL).
    """


class KeyReused(TokensError):
    """An idempotency key was given to a different operation than the one that used it first.

    Protects: a replay returns the first result of the same operation, never another
    operation's result (e.g. a capture of hold 2 under the key that captured hold 1).
    """
