"""nano-banana-gateway: the OpenAI Images API in front of the Nano Banana image APIs."""

__version__ = "0.1.0"
