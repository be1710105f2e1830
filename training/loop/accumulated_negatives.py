"""Gradient accumulation whose negatives are the whole accumulated batch (GradCache, Gao et al. 2021 — the scheme
behind open_clip's ``--accum-freq``).

Plain accumulation scores each micro-batch against itself only, so k micro-batches of b pairs train with b, not
k·b, negatives. Here the micro-batches of one optimizer step are held until the last one arrives, then:

1. every micro-batch is embedded without gradients (its random state kept, so dropout repeats exactly);
2. the contrastive loss over all of them (gathered across ranks) is differentiated with respect to the embeddings
   and the temperature only;
3. each micro-batch is embedded again with gradients and back-propagated with its part of those gradients, the
   ranks' gradients synchronised on the last one only.

The update equals one step on the whole batch. The price is one extra forward without gradients per micro-batch
(with a frozen image tower only of the text tower: its image embeddings from step 1 are reused); memory holds one
micro-batch of activations plus the embeddings of the whole batch. Hand-written because neither transformers nor
accelerate offers it and open_clip's version is tied to its own training loop.
"""

import contextlib
import functools
from collections.abc import Callable, Sequence

import torch


def rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def accumulated_contrastive_step(
    trainer,
    model: torch.nn.Module,
    batches: list[dict],
    usable: list[int | None],
    embed: Callable[[torch.nn.Module, dict], tuple[torch.Tensor, torch.Tensor]],
    loss_of: Callable[..., torch.Tensor],
    loss_parameters: Sequence[torch.Tensor],
) -> torch.Tensor:
    """Back-propagates the loss of all `batches` together (see the module docstring) and returns it, detached.

    `embed(model, batch)` gives (image_embeds, text_embeds, penalty): the penalty (the anchor term of
    ``--anchor_texts``, or None) is a loss of the batch alone, back-propagated with it at weight 1/k over the k
    micro-batches, as plain accumulation would; `loss_of(images, texts, *parameters)` the contrastive loss of the
    whole (local) batch given the model's `loss_parameters` (``logit_scale``, and SigLIP's ``logit_bias``);
    `usable[i]` cuts batch i's placeholder rows.
    """
    device = trainer.args.device
    states, images, texts = [], [], []
    with torch.no_grad():
        for batch, rows in zip(batches, usable):
            states.append(rng_state(device))
            with trainer.compute_loss_context_manager():
                image, text, _ = embed(model, batch)
            images.append(image[:rows].float())
            texts.append(text[:rows].float())
    image_leaf = torch.cat(images).requires_grad_()
    text_leaf = torch.cat(texts).requires_grad_()
    parameter_leaves = [parameter.detach().float().requires_grad_() for parameter in loss_parameters]
    loss = loss_of(image_leaf, text_leaf, *parameter_leaves)
    image_grad, text_grad, *parameter_grads = torch.autograd.grad(loss, [image_leaf, text_leaf, *parameter_leaves])
    offset, penalties = 0, torch.zeros((), device=loss.device)
    for number, (batch, rows, state) in enumerate(zip(batches, usable, states)):
        last = number == len(batches) - 1
        sync = contextlib.nullcontext if last else functools.partial(trainer.accelerator.no_sync, model=model)
        with sync():
            set_rng_state(state, device)
            with trainer.compute_loss_context_manager():
                image, text, penalty = embed(model, batch)
                image, text = image[:rows], text[:rows]
                end = offset + len(text)
                surrogate = (text.float() * text_grad[offset:end]).sum()
                if penalty is not None:
                    surrogate = surrogate + penalty / len(batches)
                    penalties = penalties + penalty.detach() / len(batches)
                if image.requires_grad:
                    surrogate = surrogate + (image.float() * image_grad[offset:end]).sum()
                if last:  # the temperature's (and bias') gradient, once; every trained parameter gets its gradient
                    for parameter, gradient in zip(loss_parameters, parameter_grads):
                        surrogate = surrogate + (parameter.float() * gradient).sum()
            trainer.accelerator.backward(surrogate)
        offset = end
    return loss.detach() + penalties
