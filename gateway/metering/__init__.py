"""Metering: the one meter every request outcome goes through, the Prometheus metrics it
feeds, and the JSON usage log."""
