"""AltCLIP processor: a CLIP image processor and an XLM-R tokenizer behind one `__call__`."""

from typing import Any

from transformers import BatchFeature, ProcessorMixin


class AltCLIPXLMRProcessor(ProcessorMixin):
    """Prepares ``input_ids``/``attention_mask`` (XLM-R tokenizer) and ``pixel_values`` (CLIP image processor).

    ``processor(text=..., images=..., return_tensors="pt", padding=True)`` returns the inputs of `AltCLIPModel`;
    text and images may come in different numbers (every text is scored against every image).
    The class is named ``AltCLIPXLMRProcessor`` because AutoProcessor resolves processors by class name and
    transformers already owns ``AltCLIPProcessor``; this package exports it under both names.
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any):
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images: Any = None, text: Any = None, **kwargs: Any) -> BatchFeature:
        if images is None and text is None:
            raise ValueError("AltCLIPProcessor needs `text`, `images` or both.")
        if isinstance(text, (list, tuple)) and len(text) == 0:
            raise ValueError("`text` is an empty list: give at least one string.")
        if isinstance(text, (list, tuple)) and not all(isinstance(item, str) for item in text):
            bad = next(i for i, item in enumerate(text) if not isinstance(item, str))
            raise TypeError(f"`text` must be a string or a list of strings; item {bad} is {type(text[bad]).__name__}.")
        return super().__call__(images=images, text=text, **kwargs)


AltCLIPProcessor = AltCLIPXLMRProcessor

__all__ = ["AltCLIPProcessor", "AltCLIPXLMRProcessor"]
