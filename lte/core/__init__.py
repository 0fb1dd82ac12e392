"""What every method and command shares: records, datasets, prompts, scoring, models, the Editor
interface, the harness, settings, errors and the one file writer."""
