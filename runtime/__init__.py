"""What every layer shares at run time: the typed settings, logging and AWS clients (no domain logic)."""
