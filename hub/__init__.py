"""The local IoT Hub stand-in (`edgeflag hub`): certificates, telemetry ingest to bronze.

Twins, direct methods, rollout and the per-device-isolating front end are the rest of
the IoT Hub issue and not built yet.
"""
