"""Admission: who is calling (client keys), what they may still do (limits), and what
their request will cost (prices)."""
