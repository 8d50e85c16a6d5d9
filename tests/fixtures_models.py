"""Model fixtures (tiny, smollm2)."""
