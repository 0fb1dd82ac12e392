"""Which bench cells the headline treats as run at an editor's defaults."""

from lte.bench.report import at_defaults
from lte.core.config import config_dict
from lte.registry import editor_config


def _cell(options=None, **changed):
    return {"editor": "memoe", "options": options or {},
            "editor_config": {**config_dict(editor_config("memoe")), **changed}}


def test_a_cell_recorded_with_todays_defaults_is_at_defaults():
    assert at_defaults(_cell())


def test_a_cell_run_before_a_default_changed_is_not():
    assert not at_defaults(_cell(lr=0.004))  # no option set, but its recorded lr is not today's


def test_a_cell_with_an_option_set_is_not_and_a_field_added_later_counts_as_its_default():
    assert not at_defaults(_cell({"steps": 5}, steps=5))
    recorded = _cell()
    del recorded["editor_config"]["act_on"]
    assert at_defaults(recorded)
