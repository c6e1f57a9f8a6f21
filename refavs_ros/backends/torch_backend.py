"""PyTorch eager backend (reference implementation of every stage)."""

from __future__ import annotations

import numpy as np
import torch

from refavs_ros.models.eemc import EEMC
from refavs_ros.models.eemc_stages import STAGES, StageModule


class TorchBackend:
    """Run EEMC stages eagerly with PyTorch under ``torch.inference_mode``.

    Args:
        model: an EEMC model; it is put in eval mode and moved to ``device``.
        device: torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    """

    name = "torch"

    def __init__(self, model: EEMC, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.stages = {name: StageModule(self.model, name) for name in STAGES}

    def run(self, stage: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """See :meth:`refavs_ros.backends.base.StageBackend.run`."""
        spec = STAGES[stage]
        args = [torch.from_numpy(np.ascontiguousarray(feeds[k], dtype=np.float32)).to(self.device) for k in spec.inputs]
        with torch.inference_mode():
            outs = self.stages[stage](*args)
        return {k: v.float().cpu().numpy() for k, v in zip(spec.outputs, outs)}
