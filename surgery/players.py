"""Map a list of player names onto the sites the hooks touch, per layer.

A player is a component name (`L3.H2`, `L3`, `L3.mlp`, `L3.attn`) or a group of names. A head may
be controlled by one head player and one `attn` player at once; its keep value is their product.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from surgery.components import ComponentIndex
from surgery.errors import SurgeryError

KINDS = {"heads", "layers", "mlps", "attns"}


@dataclass
class LayerSites:
    # head h of this layer is controlled by players head_players[h] (-1 = none) ...
    head_players: list[int]
    # ... and by the `attn` player of the layer (-1 = none)
    attn_player: int = -1
    mlp_player: int = -1
    layer_player: int = -1

    def any(self) -> bool:
        return max(self.head_players + [self.attn_player, self.mlp_player, self.layer_player]) >= 0


@dataclass
class PlayerLayout:
    names: list[str]
    sites: dict[int, LayerSites] = field(default_factory=dict)

    @property
    def n_players(self) -> int:
        return len(self.names)

    def first_layer_of(self) -> torch.Tensor:
        """For each player, the lowest layer it touches (used to find the first ablated layer)."""
        first = torch.full((self.n_players,), 10**9, dtype=torch.long)
        for layer in sorted(self.sites, reverse=True):
            s = self.sites[layer]
            for p in s.head_players + [s.attn_player, s.mlp_player, s.layer_player]:
                if p >= 0:
                    first[p] = layer
        return first


def resolve_players(components: ComponentIndex, players: str | Sequence) -> PlayerLayout:
    if isinstance(players, str):
        if players not in KINDS:
            raise SurgeryError(f"players={players!r}: use one of {sorted(KINDS)} or a list of component names")
        players = getattr(components, players)
    names, groups = [], []
    for item in players:
        if isinstance(item, str):
            names.append(item)
            groups.append([item])
        else:  # a named group: ("name", ["L0.H1", "L0.H2"]) or a plain list of names
            if len(item) == 2 and isinstance(item[0], str) and not isinstance(item[1], str):
                names.append(item[0]); groups.append(list(item[1]))
            else:
                names.append("+".join(item)); groups.append(list(item))
    if not names:
        raise SurgeryError("no players given: pass 'heads', 'layers', 'mlps', 'attns' or a list of component names")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SurgeryError(f"duplicate player names: {dup}")
    layout = PlayerLayout(names)
    claimed: dict[tuple, str] = {}
    for p, group in enumerate(groups):
        for name in group:
            c = components.parse(name)
            site = layout.sites.setdefault(c.layer, LayerSites([-1] * components.n_heads[c.layer]))
            key = (c.kind, c.layer, c.head)
            if key in claimed:
                raise SurgeryError(f"component {c.name} belongs to two players ({claimed[key]!r} and {names[p]!r})")
            claimed[key] = names[p]
            if c.kind == "head":
                site.head_players[c.head] = p
            else:
                setattr(site, f"{c.kind}_player", p)
    return layout
