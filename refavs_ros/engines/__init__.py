"""Streaming engines: the model side of the predictor (cached features, command, cached memory).

* :mod:`refavs_ros.engines.base`: the :class:`~refavs_ros.engines.base.StreamEngine` protocol;
* :mod:`refavs_ros.engines.eemc`: EEMC (tiny / base profiles) over a stage backend;
* :mod:`refavs_ros.engines.official`: the released EEMC over a sliding window;
* :mod:`refavs_ros.engines.build`: :func:`~refavs_ros.engines.build.build_engine`, weights ->
  engine (the builder ``StreamingPredictor.from_pretrained`` calls).
"""
