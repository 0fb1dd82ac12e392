"""Alignment (LTE phase 1): build the in-context editing data and fine-tune the model on it."""
