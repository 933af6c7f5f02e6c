"""Conversation domain: channels, inbound normalisation, the router, intents and skills."""
