"""Configuration of the tiny ConceptCLIP replica (remote code, loaded with trust_remote_code=True)."""

from __future__ import annotations

from transformers import PretrainedConfig


class ConceptCLIPReplicaConfig(PretrainedConfig):
    """Sizes of the replica: a timm SigLIP-family ViT image tower and a BERT text tower, plus the four scalars."""

    model_type = "conceptclip_replica"

    def __init__(
        self,
        embed_dim: int = 32,
        image_size: int = 56,
        patch_size: int = 14,
        timm_model_name: str = "vit_so400m_patch14_siglip_384",
        vision_width: int = 32,
        vision_depth: int = 2,
        vision_heads: int = 2,
        vision_mlp_ratio: float = 2.0,
        text_cfg: dict | None = None,
        text_pad_id: int = 0,
        init_logit_scale: float = 2.6592,
        init_logit_bias: float = -10.0,
        **kwargs,
    ):
        self.embed_dim = embed_dim
        self.image_size = image_size
        self.patch_size = patch_size
        self.timm_model_name = timm_model_name
        self.vision_width = vision_width
        self.vision_depth = vision_depth
        self.vision_heads = vision_heads
        self.vision_mlp_ratio = vision_mlp_ratio
        self.text_cfg = dict(text_cfg or {
            "vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 32, "max_position_embeddings": 77,
        })
        self.text_pad_id = text_pad_id
        self.init_logit_scale = init_logit_scale
        self.init_logit_bias = init_logit_bias
        super().__init__(**kwargs)
