"""The test rig's broker: cloud_jobs.mosquitto.Broker (a real, private Mosquitto)."""

from cloud_jobs.mosquitto import Broker, free_port, mosquitto_binary

__all__ = ["Broker", "free_port", "mosquitto_binary"]
