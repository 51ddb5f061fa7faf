"""The aggregator role: Redis streams -> slices -> lake files, exactly once (slicer, ledger, landing, loop)."""
