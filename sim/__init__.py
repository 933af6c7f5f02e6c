"""The economy simulator (docs/simulator.md): a synthetic population replayed over a simulated
month through the real router and ledger, sharded across processes, with the month's figures
measured against the guaranteed-profit design's targets.

Modules: `personas` (who people are, what they write), `presets` (named populations),
`population` (people and their schedules), `clock` (rate limits on simulated time),
`fake_llm` (the simulated LLM and answer cache), `replay` (one shard's month through
`bot.router.answer_message`), `shard` (processes, databases, the exact merge), `report`
(loss bound, targets, summary), `charts` (PNG, optional), `compare` (two catalogs side by
side), `run` (one month end to end). `flask simulate` (app/simulate.py) is a thin command
over `run.simulate_month` and `compare.compare_catalogs`.
"""
