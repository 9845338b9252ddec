"""Cloud side: the local IoT Hub stand-in and the Spark jobs (fleet aggregation, retraining).

So far: `mosquitto` (start a private Mosquitto broker for the demo and the tests).
"""
