"""attention ops (work in progress)."""
