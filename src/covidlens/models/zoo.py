"""Paper 000's 20 ImageNet CNNs under the names the paper uses, built on timm.

Keras names map to the timm architectures that match them layer for layer (ResNet50V2 ->
`resnetv2_50`, Xception -> `legacy_xception`, EfficientNetB5 -> `tf_efficientnet_b5`, whose
"same" padding copies the Keras weights' geometry). Native input sizes are those of Keras
Applications.
"""

from __future__ import annotations

from torch import nn

from covidlens.models.registry import create_timm, register_model

PAPER_000 = "000"

# paper name -> (timm architecture, family, native input size)
GARG2022_MODELS: dict[str, tuple[str, str, int]] = {
    "EfficientNetB0": ("tf_efficientnet_b0", "efficientnet", 224),
    "EfficientNetB1": ("tf_efficientnet_b1", "efficientnet", 240),
    "EfficientNetB2": ("tf_efficientnet_b2", "efficientnet", 260),
    "EfficientNetB3": ("tf_efficientnet_b3", "efficientnet", 300),
    "EfficientNetB4": ("tf_efficientnet_b4", "efficientnet", 380),
    "EfficientNetB5": ("tf_efficientnet_b5", "efficientnet", 456),
    "EfficientNetB6": ("tf_efficientnet_b6", "efficientnet", 528),
    "EfficientNetB7": ("tf_efficientnet_b7", "efficientnet", 600),
    "DenseNet121": ("densenet121", "densenet", 224),
    "DenseNet169": ("densenet169", "densenet", 224),
    "DenseNet201": ("densenet201", "densenet", 224),
    "ResNet50": ("resnet50", "resnet", 224),
    "ResNet50V2": ("resnetv2_50", "resnet", 224),
    "ResNet101V2": ("resnetv2_101", "resnet", 224),
    "ResNet152V2": ("resnetv2_152", "resnet", 224),
    "InceptionV3": ("inception_v3", "inception", 299),
    "InceptionResNetV2": ("inception_resnet_v2", "inception", 299),
    "Xception": ("legacy_xception", "inception", 299),
    "VGG16": ("vgg16", "vgg", 224),
    "VGG19": ("vgg19", "vgg", 224),
}


def timm_builder(architecture: str):
    """A builder that creates `architecture` from timm with covidlens' builder signature."""

    def build(
        num_classes: int, in_chans: int = 3, pretrained: bool = False, drop_rate: float | None = None
    ) -> nn.Module:
        return create_timm(architecture, num_classes, in_chans, pretrained, drop_rate)

    build.__doc__ = f"timm's {architecture}."
    return build


for _name, (_architecture, _family, _size) in GARG2022_MODELS.items():
    register_model(
        _name,
        family=_family,
        paper=PAPER_000,
        input_size=_size,
        description=f"timm {_architecture}",
    )(timm_builder(_architecture))
