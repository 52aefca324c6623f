"""The ROS 2 layer: the only part of spatialoc_ros that imports rclpy.

``node`` holds the managed node ``spatialoc_localizer``; the other modules are
the small pieces it is made of (parameter table, query buffering, the model
worker, answer publishing, message conversions, markers, the map cloud,
diagnostics). ``main`` is the entry point of the ``spatialoc-localizer``
command (``ros2 run spatialoc_ros localizer``). ``speech_node`` is the optional
``spatialoc_speech`` node (``spatialoc-speech``): WAV files in, transcripts out on
``query``.
Importing this package imports nothing heavy.
"""
