"""PyTorch eager backend (reference implementation of every stage)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from refavs_ros.export.cache import is_official
from refavs_ros.models.eemc import EEMC
from refavs_ros.models.eemc_stages import STAGES, StageModule


class TorchBackend:
    """Run a model's stages eagerly with PyTorch under ``torch.inference_mode``.

    Args:
        model: an EEMC model (stages :data:`~refavs_ros.models.eemc_stages.STAGES`) or the
            released model's ``OfficialStageModel`` (stages ``OFFICIAL_STAGES``); it is put in
            eval mode and moved to ``device``.
        device: torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

    Attributes:
        specs: stage name -> :class:`~refavs_ros.models.eemc_stages.StageSpec`.
    """

    name = "torch"

    def __init__(self, model: EEMC | nn.Module, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        if is_official(model):
            self.specs = dict(model.stages)
            self.stages = {name: model.stage_module(name) for name in self.specs if name != "audio" or model.vggish is not None}
        else:
            self.specs = dict(STAGES)
            self.stages = {name: StageModule(self.model, name) for name in STAGES}

    def run(self, stage: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """See :meth:`refavs_ros.backends.base.StageBackend.run`."""
        outs = self.run_tensors(stage, feeds)
        return {k: v.float().cpu().numpy() for k, v in outs.items()}

    def run_tensors(self, stage: str, feeds: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run one stage and keep the outputs on the backend's device (no host copy).

        Args:
            stage: stage name.
            feeds: every input by name, numpy arrays or torch tensors (any device; moved to
                this backend's device as float32).

        Returns:
            every output by name, float32 tensors on :attr:`device`.

        Raises:
            KeyError: unknown stage or missing input.
        """
        if stage not in self.stages:
            raise KeyError(f"unknown stage {stage!r}; expected one of {list(self.stages)}")
        spec = self.specs[stage]
        args = []
        for k in spec.inputs:
            if k not in feeds:
                raise KeyError(f"stage {stage!r} needs input {k!r}")
            x = feeds[k]
            x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x
            args.append(x.to(device=self.device, dtype=torch.float32))
        with torch.inference_mode():
            outs = self.stages[stage](*args)
        return dict(zip(spec.outputs, outs))
