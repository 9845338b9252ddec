"""The test rig's broker: hub.mosquitto.Broker (a real, private Mosquitto)."""

from hub.mosquitto import Broker, free_port, mosquitto_binary

__all__ = ["Broker", "free_port", "mosquitto_binary"]
