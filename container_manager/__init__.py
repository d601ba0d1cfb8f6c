"""container_manager package."""
