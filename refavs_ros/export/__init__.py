"""ONNX export of the models and the export/engine cache.

* :mod:`refavs_ros.export.cache`: cache directory, fingerprints, manifests, cached exports (what
  the backends need at start-up);
* :mod:`refavs_ros.export.onnx_utils`: tracing, float64 rewrite, float16 wrapper, verification;
* :mod:`refavs_ros.export.eemc`: EEMC stages and text encoder (``refavs-export``);
* :mod:`refavs_ros.export.official`: the released EEMC stage-wise.
"""
