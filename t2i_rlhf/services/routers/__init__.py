"""One router per resource: tasks, labels, stats/health."""
