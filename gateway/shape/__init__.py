"""Shaping answers: downloading upstream images under the network guard, checking and
re-encoding their bytes, and hosting the ones that must be answered as links."""
