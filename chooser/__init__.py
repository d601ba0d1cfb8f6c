"""chooser package."""
