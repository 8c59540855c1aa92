"""The engine: per-model queues, batch planning, limits, the scoring API objects and metrics."""
