"""greenloop package."""
