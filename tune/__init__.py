"""MetaSchedule-style tuning: features, cost model, evolutionary search and measurement.

A layer above the runtime: measuring a candidate means building and running it (codegen and
runtime), and the results go to the database that the `schedule` pass reads (`passes.tune`).
"""
