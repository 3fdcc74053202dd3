"""The segmentation networks one trainer runs, chosen by name in the config: the dual-path model and the
MONAI baselines (U-Net, SwinUNETR). All are 2D networks on 2.5D inputs (planes + neighbours as channels)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from monai.networks.nets import UNet
from torch import nn

from meddiffusion.segmentation.coding import check_coding, n_outputs
from meddiffusion.segmentation.dualpath import ATTENTIONS, DualPathSegNet

MODELS = ("dualpath", "unet", "swinunetr")


@dataclass
class SegNetworkConfig:
    #: the MONAI U-Net: the dual-path model's Transformer branch showed no gain at the same CPU time (#14)
    model: str = "unet"
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    d_model: int = 32
    n_heads: int = 4
    n_points: int = 4
    attention: str = "window"  # deformable (the proposal's) showed no gain in the five-fold ablation (#14)
    use_cnn: bool = True
    use_transformer: bool = True
    swin_feature_size: int = 12
    output: str = "regions"

    def __post_init__(self) -> None:
        check_coding(self.output)
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}")

    def to_dict(self) -> dict:
        return asdict(self)

    def architecture(self) -> dict:
        """The fields that shape this model's network (the output coding aside): what two configs must share
        for weights to move between them."""
        fields = {
            "dualpath": ("channels", "d_model", "n_heads", "n_points", "attention", "use_cnn", "use_transformer"),
            "unet": ("channels",),
            "swinunetr": ("swin_feature_size",),
        }[self.model]
        return {"model": self.model, **{k: getattr(self, k) for k in fields}}

    @property
    def size_multiple(self) -> int:
        """What every input side must be a multiple of: the networks halve three times, SwinUNETR five."""
        return 32 if self.model == "swinunetr" else 8

    def check_patch(self, patch_size: int) -> None:
        """Patches (and sliding windows) must fit the network's downsampling: SwinUNETR also normalises its
        2 x 2 bottom, so it needs 64 or more."""
        multiple, smallest = self.size_multiple, (64 if self.model == "swinunetr" else 8)
        if patch_size % multiple or patch_size < smallest:
            raise ValueError(f"data.patch_size must be a multiple of {multiple} and >= {smallest} for {self.model}")


def build_network(config: SegNetworkConfig, in_channels: int) -> nn.Module:
    """The network ``config`` names, for ``in_channels`` inputs and its output coding's channels. Training and
    prediction both build here (prediction from the config the weights carry)."""
    out_channels = n_outputs(config.output)
    if config.model == "dualpath":
        return DualPathSegNet(
            2,
            in_channels,
            out_channels,
            channels=config.channels,
            d_model=config.d_model,
            n_heads=config.n_heads,
            n_points=config.n_points,
            attention=config.attention,
            use_cnn=config.use_cnn,
            use_transformer=config.use_transformer,
        )
    if config.model == "unet":  # the residual U-Net the CNN branch is made of, on its own
        return UNet(2, in_channels, out_channels, channels=config.channels, strides=(2, 2, 2), num_res_units=2)
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(in_channels, out_channels, feature_size=config.swin_feature_size, spatial_dims=2)


def build_from_weights_config(config: dict) -> nn.Module:
    """The network a weights folder's ``config.json`` describes; the trainer builds its model from the same dict
    it saves (``segmentation.train.weights_config``), so training and prediction cannot disagree."""
    in_channels = len(config["modalities"]) * (2 * config["neighbours"] + 1)
    return build_network(SegNetworkConfig(**config["network"]), in_channels)


#: the networks whose encoder self-supervised pretraining learns (``deepest_features``, ``encoder_keys``)
PRETRAINABLE = ("dualpath", "unet")


def _unet_encoder(model: UNet) -> tuple[list[tuple[str, nn.Module]], tuple[str, nn.Module]]:
    """The down blocks of a MONAI U-Net and its bottom block, with their parameter-name prefixes. MONAI nests
    each level as ``Sequential(down, SkipConnection(next level), up)`` and the bottom as the last submodule."""
    downs, level, prefix = [], model.model, "model."
    while isinstance(level, nn.Sequential) and len(level) == 3:
        downs.append((prefix + "0.", level[0]))
        level, prefix = level[1].submodule, prefix + "1.submodule."
    return downs, (prefix, level)


def deepest_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The encoder's coarsest feature map of ``x``: what self-supervised pretraining pools into an embedding."""
    if isinstance(model, DualPathSegNet):
        return model.encode(x)[3]
    if isinstance(model, UNet):
        downs, (_, bottom) = _unet_encoder(model)
        for _, block in downs:
            x = block(x)
        return bottom(x)
    raise TypeError(f"no encoder is defined for {type(model).__name__}")


def encoder_keys(model: nn.Module) -> list[str]:
    """The state-dict keys of the encoder (everything but the decoder): what pretraining learns and ``seg train
    --init`` loads. Dual path: both branches and their fusion; U-Net: the down blocks and the bottom."""
    keys = list(model.state_dict())
    if isinstance(model, DualPathSegNet):
        return [k for k in keys if not k.startswith(DualPathSegNet.DECODER_PREFIXES)]
    if isinstance(model, UNet):
        downs, (bottom, _) = _unet_encoder(model)
        return [k for k in keys if k.startswith((*(p for p, _ in downs), bottom))]
    raise TypeError(f"no encoder is defined for {type(model).__name__}")


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The last layer every loss term flows through: GradNorm measures the terms' gradients there."""
    last = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d))][-1]
    return list(last.parameters())
