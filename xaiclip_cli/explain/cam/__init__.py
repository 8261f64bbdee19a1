"""CAM methods by family (gradient, eigen, score) and the batch engine that runs them on a ClipBackend."""

from __future__ import annotations

from dataclasses import dataclass

METHOD_NAMES = ("gradcam", "hirescam", "layercam", "xgradcam", "gradcam++", "eigencam", "scorecam", "gscorecam",
                "legrad")


@dataclass(frozen=True)
class MethodInfo:
    """What a method needs and where it works."""

    name: str
    family: str
    needs_gradient: bool
    extra_forwards: str
    text_aware: bool
    towers: str
    summary: str


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo("gradcam", "gradient", True, "0", True, "CNN, ViT, SigLIP",
                   "channel weights = spatial mean of the gradient (legacy default)"),
        MethodInfo("hirescam", "gradient", True, "0", True, "CNN, ViT, SigLIP",
                   "sum over channels of gradient x activation"),
        MethodInfo("layercam", "gradient", True, "0", True, "CNN, ViT, SigLIP",
                   "sum over channels of ReLU(gradient) x activation"),
        MethodInfo("xgradcam", "gradient", True, "0", True, "CNN, ViT, SigLIP",
                   "channel weights = activation-weighted gradient sums"),
        MethodInfo("gradcam++", "gradient", True, "0", True, "CNN, ViT, SigLIP",
                   "second-order alpha weighting of positive gradients"),
        MethodInfo("eigencam", "eigen", False, "0", False, "CNN, ViT, SigLIP",
                   "first principal component of the activations (ignores the text)"),
        MethodInfo("scorecam", "score", False, "C", True, "CNN, ViT, SigLIP",
                   "softmax of target scores of the input masked by each channel"),
        MethodInfo("gscorecam", "score", True, "topk", True, "CNN; recommended for ViT/SigLIP/ConceptCLIP",
                   "Score-CAM on the top-k channels by gradient (8-10x faster)"),
        MethodInfo("legrad", "token-gradient", True, "K", True, "ViT, SigLIP",
                   "ReLU gradients of each block's score w.r.t. attention probabilities, summed over the last K"),
    )
}
