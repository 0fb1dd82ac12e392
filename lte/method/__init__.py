"""LTE itself: retrieval into the prompt of an aligned model (`editor.py`) and the alignment that
builds that model (`method/align/`)."""
