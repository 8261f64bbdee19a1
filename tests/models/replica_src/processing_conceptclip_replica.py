"""Processor of the ConceptCLIP replica: SiglipImageProcessor for images, BertTokenizer for text."""

from __future__ import annotations

from transformers import BatchFeature, ProcessorMixin

_TEXT_KEYS = {"padding", "truncation", "max_length", "return_attention_mask", "return_token_type_ids",
              "pad_to_multiple_of", "add_special_tokens"}


class ConceptCLIPReplicaProcessor(ProcessorMixin):
    """Text kwargs go to the tokenizer, everything else to the image processor."""

    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "SiglipImageProcessor"
    tokenizer_class = ("BertTokenizer", "BertTokenizerFast")

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images=None, text=None, return_tensors="pt", **kwargs):
        text_kw = {k: v for k, v in kwargs.items() if k in _TEXT_KEYS}
        image_kw = {k: v for k, v in kwargs.items() if k not in _TEXT_KEYS}
        data = {}
        if text is not None:
            data.update(self.tokenizer(text, return_tensors=return_tensors, **text_kw))
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors, **image_kw))
        return BatchFeature(data=data, tensor_type=return_tensors)
