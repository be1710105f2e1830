"""AltCLIP for transformers: importing this package registers its classes with the Auto classes.

``AutoModel``, ``AutoModelForZeroShotImageClassification``, ``AutoConfig`` and ``AutoProcessor`` then load
this package's checkpoints (model_type ``altclip_xlmr``), and ``save_pretrained`` writes the modeling code next to
the weights so that ``trust_remote_code=True`` loads them where the package is not installed.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

from .configuration_altclip import (
    AltCLIPConfig,
    AltCLIPTextConfig,
    AltCLIPVisionConfig,
    convert_released_config_dict,
)
from .modeling_altclip import (
    AltCLIPModel,
    AltCLIPOutput,
    AltCLIPPreTrainedModel,
    AltCLIPTextModel,
    AltCLIPVisionModel,
    CheckpointMismatchError,
    NonFiniteInputError,
    NonFiniteWeightsError,
    check_finite_input,
    check_finite_weights,
)
from .processing_altclip import AltCLIPProcessor, AltCLIPXLMRProcessor

__version__ = "0.1.0"


def _register() -> None:
    for config_class in (AltCLIPConfig, AltCLIPTextConfig, AltCLIPVisionConfig):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(AltCLIPConfig, AltCLIPModel, exist_ok=True)
    AutoModel.register(AltCLIPTextConfig, AltCLIPTextModel, exist_ok=True)
    AutoModel.register(AltCLIPVisionConfig, AltCLIPVisionModel, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(AltCLIPConfig, AltCLIPModel, exist_ok=True)
    AutoProcessor.register(AltCLIPConfig, AltCLIPProcessor, exist_ok=True)
    # save_pretrained copies the code and writes `auto_map`, for trust_remote_code loading elsewhere.
    AltCLIPConfig.register_for_auto_class()
    AltCLIPModel.register_for_auto_class("AutoModel")
    AltCLIPProcessor.register_for_auto_class("AutoProcessor")


_register()

__all__ = [
    "AltCLIPConfig",
    "AltCLIPModel",
    "AltCLIPOutput",
    "AltCLIPPreTrainedModel",
    "AltCLIPProcessor",
    "AltCLIPXLMRProcessor",
    "AltCLIPTextConfig",
    "AltCLIPTextModel",
    "AltCLIPVisionConfig",
    "AltCLIPVisionModel",
    "CheckpointMismatchError",
    "NonFiniteInputError",
    "NonFiniteWeightsError",
    "check_finite_input",
    "check_finite_weights",
    "convert_released_config_dict",
]
