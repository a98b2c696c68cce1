"""One fine-tuning round on Ray Train: config, the rewards as the objective reads them (rewards),
the Ray Data sources (data), the worker loop (worker), losses, model load/export, the driver side
(trainer)."""
