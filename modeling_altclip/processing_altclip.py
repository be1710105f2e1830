"""AltCLIP processor: a CLIP image processor and an XLM-R tokenizer behind one `__call__`."""

from typing import Any

from transformers import BatchFeature, ProcessorMixin

from .configuration_altclip import check_local_path


class AltCLIPXLMRProcessor(ProcessorMixin):
    """Prepares ``input_ids``/``attention_mask`` (XLM-R tokenizer) and ``pixel_values`` (CLIP image processor).

    ``processor(text=..., images=..., return_tensors="pt", padding=True)`` returns the inputs of `AltCLIPModel`;
    text and images may come in different numbers (every text is scored against every image).
    The class is named ``AltCLIPXLMRProcessor`` because AutoProcessor resolves processors by class name and
    transformers already owns ``AltCLIPProcessor``; this package exports it under both names.
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any):
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any):
        """Like `ProcessorMixin.from_pretrained`; a missing local folder is named as such (not as a bad Hub id)."""
        check_local_path(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def __call__(self, images: Any = None, text: Any = None, **kwargs: Any) -> BatchFeature:
        if images is None and text is None:
            raise ValueError("AltCLIPProcessor needs `text`, `images` or both.")
        if isinstance(text, (list, tuple)) and len(text) == 0:
            raise ValueError("`text` is an empty list: give at least one string.")
        if isinstance(text, (list, tuple)) and not all(isinstance(item, str) for item in text):
            bad = next(i for i, item in enumerate(text) if not isinstance(item, str))
            raise TypeError(f"`text` must be a string or a list of strings; item {bad} is {type(text[bad]).__name__}.")
        if text is not None:
            self._limit_text_length(kwargs)
        return super().__call__(images=images, text=text, **kwargs)

    def _limit_text_length(self, kwargs: dict) -> None:
        """Texts are cut at the text tower's position limit unless the caller chose otherwise (XLM-R has 512
        positions: a longer text would fail inside the model); a longer ``max_length`` is refused with the limit."""
        limit = getattr(self.tokenizer, "model_max_length", None)
        if not isinstance(limit, int) or limit > 100_000:  # transformers' "no limit known" sentinel
            return
        requested = kwargs.get("max_length")
        if requested is not None and requested > limit:
            raise ValueError(
                f"max_length={requested} is beyond the text tower's {limit} positions; use at most {limit}."
            )
        if kwargs.setdefault("truncation", True) and requested is None:
            kwargs["max_length"] = limit


AltCLIPProcessor = AltCLIPXLMRProcessor

__all__ = ["AltCLIPProcessor", "AltCLIPXLMRProcessor"]
