"""The parts of a deployed model: small modules that TorchScript, ``torch.export`` and ONNX take.

Every choice (pooling, activation, output) is a string fixed at build time, every constant
a buffer, and nothing calls back into featcache, so a saved TorchScript file runs where
featcache is not installed. :class:`DeployedModel` chains them:
``images in [0, 1] -> Normalize -> backbone -> Pool -> Rounding -> head -> Output``; for
``predict``, the output ends with a :class:`Label` (the class index).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["DeployedModel", "Normalize", "ForwardFeatures", "SelectOutput", "Pool", "Rounding",
           "Standardize", "Dense", "TailHead", "Output", "PriorShift", "Label"]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as
    :class:`featcache.backbones.capture.FeatureExtractor` normalises."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ForwardFeatures(nn.Module):
    """A timm network's ``forward_features``: its final feature map (featcache's default layer)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.forward_features(x)


class Pool(nn.Module):
    """One vector per image, as :func:`featcache.backbones.capture.pool_features` computes it.

    ``pooling``: ``avg``, ``max``, ``gem`` (p = 3), ``cls`` (first token), ``none`` (flatten),
    or ``identity`` (keep the tensor: a feature map that a trained tail reads). ``nhwc``: a
    4-D input is laid out ``(n, h, w, c)`` (timm's Swin family).
    """

    def __init__(self, pooling: str, nhwc: bool = False):
        super().__init__()
        self.pooling = pooling
        self.nhwc = nhwc

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if self.pooling == "identity":
            return t
        if t.dim() == 4 and self.nhwc:
            t = t.permute(0, 3, 1, 2)
        if t.dim() == 2:
            return t
        if self.pooling == "none":
            return t.flatten(1)
        if self.pooling == "cls":
            return t[:, 0]
        if t.dim() == 4:
            if self.pooling == "max":
                return t.amax(dim=[2, 3])
            if self.pooling == "gem":
                return t.clamp(min=1e-6).pow(3.0).mean(dim=[2, 3]).pow(1.0 / 3.0)
            return t.mean(dim=[2, 3])
        if self.pooling == "max":
            return t.amax(dim=[1])
        if self.pooling == "gem":
            return t.clamp(min=1e-6).pow(3.0).mean(dim=[1]).pow(1.0 / 3.0)
        return t.mean(dim=[1])


class Rounding(nn.Module):
    """The cache's storage type: ``float16`` rows are rounded to float16 and back, as the
    estimator's head saw (and was trained on) them; ``float32`` passes through."""

    def __init__(self, storage: str = "float32"):
        super().__init__()
        self.storage = storage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.storage == "float16":
            return x.to(torch.float16).to(torch.float32)
        return x


class Standardize(nn.Module):
    """scikit-learn's ``StandardScaler.transform``: ``(x - mean_) / scale_``."""

    def __init__(self, mean, scale):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


class Dense(nn.Module):
    """A linear layer and an activation (``identity``, ``relu``, ``tanh``, ``logistic``)."""

    def __init__(self, weight, bias, activation: str = "identity"):
        super().__init__()
        weight = torch.tensor(np.array(weight, dtype=np.float32))
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(torch.tensor(np.array(bias, dtype=np.float32)))
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        if self.activation == "relu":
            return torch.relu(x)
        if self.activation == "tanh":
            return torch.tanh(x)
        if self.activation == "logistic":
            return torch.sigmoid(x)
        return x


class TailHead(nn.Module):
    """A partially frozen estimator's trained stages, their pooling and its linear head."""

    def __init__(self, stages, pool: str, head: nn.Linear):
        super().__init__()
        self.stages = nn.Sequential(*stages)
        self.pool = Pool(pool)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.stages(x)))


class Output(nn.Module):
    """What the estimator's method makes of the head's output.

    ``kind``: ``identity``; ``softmax`` (over classes); ``sigmoid`` (each output);
    ``sigmoid2`` (one logit -> ``[1 - p, p]``, scikit-learn's binary ``predict_proba``);
    ``diff`` (two logits -> ``z1 - z0``, a binary ``decision_function``); ``affine``
    (``z * scale + shift``, a regressor's standardised targets). ``squeeze``: one output
    column becomes a 1-D result, as scikit-learn returns it.
    """

    def __init__(self, kind: str, squeeze: bool = False, scale=None, shift=None):
        super().__init__()
        self.kind = kind
        self.squeeze = squeeze
        self.register_buffer("scale", torch.as_tensor(1.0 if scale is None else scale,
                                                      dtype=torch.float32))
        self.register_buffer("shift", torch.as_tensor(0.0 if shift is None else shift,
                                                      dtype=torch.float32))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "softmax":
            z = torch.softmax(z, dim=1)
        elif self.kind == "sigmoid":
            z = torch.sigmoid(z)
        elif self.kind == "sigmoid2":
            p = torch.sigmoid(z[:, 0])
            z = torch.stack([1.0 - p, p], dim=1)
        elif self.kind == "diff":
            z = z[:, 1:2] - z[:, 0:1]
        elif self.kind == "affine":
            z = z * self.scale + self.shift
        if self.squeeze:
            z = z[:, 0]
        return z


class PriorShift(nn.Module):
    """Probabilities adjusted to another class prior, as
    :class:`featcache.probe.PriorShiftClassifier` adjusts them: each class's probability times
    its weight (``target_prior_ / train_prior_``), each row renormalised to sum to 1."""

    def __init__(self, weights):
        super().__init__()
        self.register_buffer("weights", torch.tensor(np.asarray(weights, dtype=np.float32)))

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        scaled = p * self.weights
        return scaled / scaled.sum(dim=1, keepdim=True)


class Label(nn.Module):
    """A classifier's scores -> the predicted class, as its index into ``classes_`` (int64).

    ``kind``: ``argmax`` (the highest of ``(n, n_classes)`` scores: ``predict`` of a
    multiclass classifier, or from probabilities); ``positive`` (a binary decision function
    ``(n,)``: ``classes_[1]`` where it is > 0, as scikit-learn's linear classifiers);
    ``threshold`` (an operating point: the positive class, index ``positive``, where its score
    is ``>= threshold``, else the other, as scikit-learn's ``FixedThresholdClassifier``; the
    score is column ``positive`` of ``(n, 2)`` probabilities, or a binary decision function,
    negated when the positive class is ``classes_[0]``). The comparison is in float64, so
    the threshold is not rounded to float32.
    """

    def __init__(self, kind: str, threshold: float = 0.0, positive: int = 1):
        super().__init__()
        self.kind = kind
        self.positive = int(positive)
        self.register_buffer("threshold", torch.tensor(float(threshold), dtype=torch.float64))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "argmax":
            return z.argmax(dim=1)
        if self.kind == "positive":
            return (z > 0).to(torch.int64)
        if z.dim() == 2:
            score = z[:, self.positive]
        elif self.positive == 1:
            score = z
        else:
            score = -z
        above = (score.to(torch.float64) >= self.threshold).to(torch.int64)
        if self.positive == 1:
            return above
        return 1 - above


class DeployedModel(nn.Module):
    """A fitted featcache model as one module: preprocessed images in, the estimator's output out.

    ``forward(images)``: ``images`` is ``featcache.preprocess(X, estimator)``, float32
    ``(n, 3, image_size, image_size)`` in [0, 1]; the output is what ``method`` of the
    estimator returns (``predict_proba``: ``(n, n_classes)`` in ``classes_`` order), except
    that a classifier's ``predict`` gives int64 ``(n,)`` indices into ``classes_`` (labels may
    be strings, which no tensor holds): ``classes_[output]`` are the labels.

    Attributes (Python only; a saved TorchScript file keeps the module, not these)
    ----------
    method : str
        The estimator's method this module reproduces.
    classes_ : ndarray or None
        Class labels, in the order of the output's columns (classifiers).
    image_size : int
        Side of the input.
    """

    def __init__(self, normalize, backbone, pool, rounding, head, output, *, method,
                 classes=None, image_size=None, cam_layer: str = "backbone"):
        super().__init__()
        self.normalize, self.backbone, self.pool = normalize, backbone, pool
        self.rounding, self.head, self.output = rounding, head, output
        self.method = method
        self.classes_ = classes
        self.image_size = image_size
        self.cam_layer_name = cam_layer

    def cam_layer(self) -> nn.Module:
        """The submodule whose output is the last spatial feature map before pooling
        (``cam_layer_name``): the target layer of Grad-CAM and its relatives (docs/deploy.md)."""
        return self.get_submodule(self.cam_layer_name)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images)
        x = self.backbone(x)
        x = self.pool(x)
        x = self.rounding(x)
        x = self.head(x)
        return self.output(x)


class SelectOutput(nn.Module):
    """The one tensor of a ``torch.fx`` feature extractor's ``{"out": tensor}`` result."""

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)["out"]
