"""The ablation variants: the full model and what each ablation or baseline changes in its config.

Kept free of heavy imports so that the command line can list them without loading torch.
"""

from __future__ import annotations

from typing import Any

#: the proposal's parts that an ablation variant removes, one each
_REMOVALS: dict[str, dict[str, Any]] = {
    "no_deformable": {"network.attention": "window"},
    "no_reweighting": {"loss.reweighting": "none"},
    "no_boundary": {"loss.beta": 0.0},
}
#: variant name -> config overrides ("section.key": value) of the config ablated, the proposal's recipe
#: (``configs/seg_dualpath_proposal.yaml``): each changes one of the proposal's parts, "plain" removes the three
#: that the ablation showed no gain for (``configs/seg_dualpath.yaml``, whose "unet" variant is the default recipe,
#: ``configs/seg_unet.yaml``); "floor" is the FLAIR threshold, not trained
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    **_REMOVALS,
    "with_topology": {"loss.gamma": 0.01},
    "plain": {k: v for removal in _REMOVALS.values() for k, v in removal.items()},
    "unet": {"network.model": "unet"},
    "swinunetr": {"network.model": "swinunetr"},
    "floor": {},
}
