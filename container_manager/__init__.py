"""The modelbus client library: deploy and manage models on a modelbus service over the bus.

``ServiceClient`` is the async client of every operation; ``BusContainerManager`` plugs the
service into Clipper's own ``clipper_admin.ClipperConnection``, and ``deploy_python_closure`` /
``create_endpoint`` are Clipper's python deployer without a container engine;
``write_model_image`` writes a model image's build context (a fittable model can then be fitted
in its image).
"""

from container_manager.clipper import CLOSURE_IMAGE_PREFIX, BusContainerManager
from container_manager.deployers import create_endpoint, deploy_python_closure
from container_manager.images import write_model_image
from container_manager.service import DEFAULT_SERVICE_PATH, ServiceClient

__all__ = [
    "CLOSURE_IMAGE_PREFIX",
    "DEFAULT_SERVICE_PATH",
    "BusContainerManager",
    "ServiceClient",
    "create_endpoint",
    "deploy_python_closure",
    "write_model_image",
]
