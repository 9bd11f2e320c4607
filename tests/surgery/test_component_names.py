"""One grammar of component names, shared by every parser and formatter."""

import pytest

from surgery import head_name, layer_name, parse_component, parse_head_name
from surgery.components import Component, ComponentIndex
from surgery.errors import SurgeryError


def test_names_round_trip_through_the_parser():
    assert head_name(5, 3) == "L5.H3" and parse_head_name("L5.H3") == (5, 3)
    assert layer_name(7) == "L7" and parse_component("L7") == Component("layer", 7)
    for name in ("L0", "L2.H11", "L3.mlp", "L4.attn"):
        assert parse_component(name).name == name


@pytest.mark.parametrize("bad", ["l5.h3", "L5.H", "L5.h3", "5.3", "L-1.H0", "L1.H2.mlp", "", None])
def test_malformed_names_are_refused_naming_the_forms(bad):
    with pytest.raises(SurgeryError, match="'L<layer>.H<head>'"):
        parse_component(bad)


def test_a_head_parser_refuses_other_components_and_the_index_checks_ranges():
    with pytest.raises(SurgeryError, match="not a head"):
        parse_head_name("L3.mlp")
    index = ComponentIndex([2, 3], [2, 3], head_dim=4)
    assert index.parse("L1.H2") == Component("head", 1, 2)
    with pytest.raises(SurgeryError, match="head 2 out of range, layer 0 has heads 0..1"):
        index.parse("L0.H2")
    with pytest.raises(SurgeryError, match="layer 2 out of range"):
        index.parse("L2")
