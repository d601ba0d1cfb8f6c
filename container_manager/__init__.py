"""The modelbus client library: deploy and manage models on a modelbus service over the bus."""

from container_manager.service import DEFAULT_SERVICE_PATH, ServiceClient

__all__ = ["DEFAULT_SERVICE_PATH", "ServiceClient"]
