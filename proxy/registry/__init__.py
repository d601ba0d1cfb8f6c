"""The registry: applications, model versions, links, replicas and uploads, in SQLite.

Door: it imports nothing of the service, the uploads or the backend; its records are frozen,
validated on the way in and out. Open it with ``async with Registry.open(path)``.
"""

from proxy.registry.registry import Registry

__all__ = ["Registry"]
