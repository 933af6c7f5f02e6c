"""Economy domain: ledger, catalog, payments. Imports neither `bot` nor `app`, nor Flask."""
