"""What tests/ and bench/ share to run the app without the outside world: local
stand-ins for the Twilio, Stripe and OpenAI APIs on loopback (`twilio_standin`,
`stripe_standin`, `openai_standin` on `loopback`), launchers of real PostgreSQL and Redis
servers (`postgres`, `redis_server`), the app configured as a test deployment
(`deployment`), and the recorded provider payloads (`payloads`, `fixtures/`).

Nothing here is imported by app/, bot/, tokens/ or sim/ (the simulator is a product command
with an in-process LLM; its tests use this package like the others).
"""
