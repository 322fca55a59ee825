"""salvage_campaign: the steps of an invalid campaign file that can still be checked, at their own lines;
postal_address_of: which postal address a campaign's emails show."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nurture.core.campaign import Sender, parse_campaign, postal_address_of, salvage_campaign
from nurture.errors import ConfigErrors

HEAD = """\
id: broken
name: Broken
colour: blue
sender: {from: "Acme <growth@acme.example>", postal_address: "1 Main St"}
steps:
"""
GOOD_STEP = """\
  - id: s{index}
    day: {index}
    subject: Step {index}
    template: t{index}.html.j2
"""
BAD_STEPS = (
    "  - id: s{index}\n    day: soon\n    subject: Step {index}\n    template: t{index}.html.j2\n",
    "  - id: s{index}\n    day: {index}\n    template: t{index}.html.j2\n",  # an email step with no subject
    "  - id: S {index}\n    day: {index}\n    subject: Step {index}\n    template: t{index}.html.j2\n",
    "  - just text\n",
)


@given(st.lists(st.one_of(st.none(), st.sampled_from(BAD_STEPS)), min_size=1, max_size=8))
def test_the_valid_steps_of_an_invalid_file_are_salvaged_each_pointing_at_its_own_lines(
    steps: list[str | None],
) -> None:
    # Given a file with an unknown key and steps of which some (None) are valid
    text = HEAD + "".join((bad or GOOD_STEP).format(index=i) for i, bad in enumerate(steps))
    with pytest.raises(ConfigErrors):
        parse_campaign(text, source="broken.yaml")
    salvaged = salvage_campaign(text, source="broken.yaml")
    good = [i for i, bad in enumerate(steps) if bad is None]
    if not good:
        assert salvaged is None
        return
    # Then exactly the valid steps are kept, in order, and each one's template key is at its own line
    assert salvaged is not None
    assert [s.id for s in salvaged.steps] == [f"s{i}" for i in good]
    lines = text.splitlines()
    for kept, i in enumerate(good):
        line = salvaged.line_of("steps", kept, "template")
        assert line is not None
        assert lines[line - 1] == f"    template: t{i}.html.j2"
    assert (salvaged.id, salvaged.source, salvaged.line_of("sender")) == ("broken", "broken.yaml", 4)
    assert salvaged.sender.postal_address == "1 Main St"


def test_a_file_that_is_not_yaml_salvages_nothing() -> None:
    assert salvage_campaign("steps: [unclosed\n", source="x.yaml") is None


@pytest.mark.parametrize(
    ("own", "fallback", "expected"),
    [
        ("1 Main St", None, "1 Main St"),
        ("1 Main St", "2 Side St", "1 Main St"),
        (None, "2 Side St", "2 Side St"),
        (None, None, None),
        (None, "  ", None),
    ],
)
def test_postal_address_of_is_the_campaigns_own_then_the_setting(
    own: str | None, fallback: str | None, expected: str | None
) -> None:
    text = HEAD.replace("colour: blue\n", "") + GOOD_STEP.format(index=0)
    campaign = parse_campaign(text, source="c.yaml")
    campaign = dataclasses.replace(campaign, sender=Sender("a@b.example", postal_address=own))
    assert postal_address_of(campaign, fallback) == expected
