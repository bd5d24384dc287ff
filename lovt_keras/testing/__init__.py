"""Test helpers: tiny models and random batches."""
