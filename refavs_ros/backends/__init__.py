"""Inference backends behind one interface: run a named stage on named numpy arrays.

``torch`` (always available), ``onnxruntime`` and ``tensorrt`` (optional) implement
:class:`StageBackend`; :func:`refavs_ros.backends.registry.create_backend` builds one by name.
"""

from refavs_ros.backends.base import StageBackend

__all__ = ["StageBackend"]
