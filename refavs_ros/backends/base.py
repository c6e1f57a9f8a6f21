"""The backend interface shared by PyTorch, ONNX Runtime and TensorRT."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class StageBackend(Protocol):
    """Runs the model's stages (see ``refavs_ros.models.eemc_stages.STAGES``).

    Attributes:
        name: ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``.
    """

    name: str

    def run(self, stage: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one stage.

        Args:
            stage: stage name (``visual``, ``audio``, ``fuse``, ``decode``).
            feeds: every input of the stage by name, float32 numpy arrays of the documented
                shapes.

        Returns:
            every output of the stage by name, float32 numpy arrays (host memory).

        Raises:
            KeyError: unknown stage or missing input.
        """
        ...
