"""MetaSchedule-style tuning: database, features, cost model, evolutionary search, measurement."""
