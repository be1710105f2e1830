"""Exact shortcuts for embedding images with a CLIP-style vision tower.

The image embedding reads only the [CLS] position of the last layer, so the last layer's attention is computed for
the [CLS] query alone (over all keys and values) and its MLP for [CLS] alone: the same numbers as the full forward
(up to float rounding), one layer's worth of work less per image outside the attention keys and values.
"""

import torch
import torch.nn.functional as F


def supports_cls_only(model: torch.nn.Module) -> bool:
    """Whether `model` has the CLIP vision layout this shortcut composes (ours, transformers' CLIP and AltCLIP)."""
    vision = getattr(model, "vision_model", None)
    layers = getattr(getattr(vision, "encoder", None), "layers", None)
    return (
        layers is not None
        and len(layers) > 0
        and all(hasattr(vision, name) for name in ("embeddings", "pre_layrnorm", "post_layernorm"))
        and all(hasattr(layers[-1], name) for name in ("self_attn", "layer_norm1", "layer_norm2", "mlp"))
        and hasattr(model, "visual_projection")
    )


def cls_only_layer(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """A CLIP encoder layer evaluated for the first position only: [batch, 1, width]."""
    attention = layer.self_attn
    batch, length, width = hidden.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    normed = layer.layer_norm1(hidden)
    query = attention.q_proj(normed[:, :1]).view(batch, 1, heads, head_dim).transpose(1, 2)
    key = attention.k_proj(normed).view(batch, length, heads, head_dim).transpose(1, 2)
    value = attention.v_proj(normed).view(batch, length, heads, head_dim).transpose(1, 2)
    attended = F.scaled_dot_product_attention(query, key, value, scale=attention.scale)
    cls = hidden[:, :1] + attention.out_proj(attended.transpose(1, 2).reshape(batch, 1, width))
    return cls + layer.mlp(layer.layer_norm2(cls))


def projected_image_features(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """`model.get_image_features(pixel_values).pooler_output`, with the last layer run for [CLS] only."""
    vision = model.vision_model
    hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
    for layer in vision.encoder.layers[:-1]:
        hidden = layer(hidden, attention_mask=None)
    cls = cls_only_layer(vision.encoder.layers[-1], hidden)[:, 0]
    return model.visual_projection(vision.post_layernorm(cls))
