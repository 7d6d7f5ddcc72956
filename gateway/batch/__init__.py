"""The Batch API: files and batches of image requests, run in the background."""
