"""From run directories to tables and figures: the paper's tables, `report`, `compare`, the
merge of subset runs, the spawn sweep's summary, and every figure. Reads run directories only:
it never builds a model or imports a user's module."""
