"""The LoVT pretraining step in plain PyTorch: the reference of ``python -m tools.bench``.

No Keras: the same model as ``lovt_keras`` builds, layer by layer, in PyTorch's own idiom
(NCHW convolutions, ``nn.Linear``, ``F.scaled_dot_product_attention`` in BERT, eager
autograd, ``torch.optim.AdamW``), as a user of the official PyTorch code would run it:

- a torchvision-layout ResNet of the same depth and width (``ResNetImageEncoder``,
  grayscale repeated to RGB), regions = the flattened ``conv5`` (or ``conv4``) map;
- a post-LayerNorm BERT of the same shapes as keras-hub's ``BertBackbone`` (token,
  position and segment embeddings, tanh-GELU, the unused pooled ``[CLS]`` dense), the
  embeddings and the first ``num_frozen_layers`` layers frozen, sentence max pooling;
- attention pooling (query = masked mean), projection heads with masked BatchNorm, the
  symmetric cross-modal alignment with its BatchNorm;
- the global and local losses of ``lovt_keras.losses.contrastive``, weighted as
  ``LoVTPretrainer.LOSSES``.

``tests/tools/bench_test.py`` checks that it has exactly the Keras model's weights
(trainable and frozen) and that its losses equal ``lovt_keras``' on the same inputs.
This module imports torch when imported; ``tools.bench`` imports it only in the process
that runs the reference (not for ``--help``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_MASKED_LOGIT = -1e9
_NORM_EPSILON = 1e-12
_WEIGHT_EPSILON = 1e-12

# depth -> (bottleneck blocks, blocks per stage), as lovt_keras.models.image_encoder.
RESNET_BLOCKS = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
}


# --- image encoder


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False),
              nn.BatchNorm2d(cout, eps=1e-5)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _Block(nn.Module):
    def __init__(self, cin: int, filters: int, stride: int, bottleneck: bool, shortcut: bool):
        super().__init__()
        out = 4 * filters if bottleneck else filters
        self.shortcut = _conv_bn(cin, out, 1, stride, relu=False) if shortcut else None
        if bottleneck:
            self.body = nn.Sequential(_conv_bn(cin, filters, 1, 1),
                                      _conv_bn(filters, filters, 3, stride),
                                      _conv_bn(filters, out, 1, 1, relu=False))
        else:
            self.body = nn.Sequential(_conv_bn(cin, filters, 3, stride),
                                      _conv_bn(filters, filters, 3, 1, relu=False))

    def forward(self, x):
        residual = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.body(x) + residual)


class ResNet(nn.Module):
    """torchvision-layout ResNet (stride on the 3x3 conv) of any width; returns the stage
    outputs ``conv2`` ... ``conv5`` (NCHW) of ``(B, C, H, W)`` images (C = 1 is repeated)."""

    def __init__(self, depth: int, width: int):
        super().__init__()
        bottleneck, blocks = RESNET_BLOCKS[depth]
        self.stem = _conv_bn(3, width, 7, 2)
        self.pool = nn.MaxPool2d(3, 2, padding=1)
        stages, cin = [], width
        for stage, count in enumerate(blocks):
            filters, layers = width * 2**stage, []
            for block in range(count):
                first = block == 0
                layers.append(_Block(cin, filters, 2 if first and stage > 0 else 1, bottleneck,
                                     shortcut=first and (stage > 0 or bottleneck)))
                cin = 4 * filters if bottleneck else filters
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.channels = {f"conv{i + 2}": width * 2**i * (4 if bottleneck else 1)
                         for i in range(4)}

    def forward(self, images):
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        x = self.pool(self.stem(x))
        features = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            features[f"conv{i + 2}"] = x
        return features


# --- report encoder


class _BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attention_output = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.output = nn.Linear(intermediate, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x, attention_mask):
        batch, tokens, hidden = x.shape

        def heads(t):
            return t.view(batch, tokens, self.heads, hidden // self.heads).transpose(1, 2)

        context = F.scaled_dot_product_attention(
            heads(self.query(x)), heads(self.key(x)), heads(self.value(x)),
            attn_mask=attention_mask, dropout_p=self.dropout if self.training else 0.0)
        context = context.transpose(1, 2).reshape(batch, tokens, hidden)
        attended = F.dropout(self.attention_output(context), self.dropout, self.training)
        x = self.attention_norm(x + attended)
        y = self.output(F.gelu(self.intermediate(x), approximate="tanh"))
        return self.output_norm(x + F.dropout(y, self.dropout, self.training))


class Bert(nn.Module):
    """keras-hub's ``BertBackbone`` (post-LayerNorm) in PyTorch; returns token features."""

    def __init__(self, vocabulary_size: int, num_layers: int, num_heads: int, hidden_dim: int,
                 intermediate_dim: int, max_sequence_length: int, num_segments: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        self.dropout = dropout
        self.token_embedding = nn.Embedding(vocabulary_size, hidden_dim)
        self.position_embedding = nn.Embedding(max_sequence_length, hidden_dim)
        self.segment_embedding = nn.Embedding(num_segments, hidden_dim)
        self.embeddings_norm = nn.LayerNorm(hidden_dim, eps=1e-12)
        self.layers = nn.ModuleList(_BertLayer(hidden_dim, num_heads, intermediate_dim, dropout)
                                    for _ in range(num_layers))
        self.pooled_dense = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, token_ids, padding_mask):
        positions = torch.arange(token_ids.shape[1], device=token_ids.device)
        x = (self.token_embedding(token_ids) + self.position_embedding(positions)[None]
             + self.segment_embedding(torch.zeros_like(token_ids)))
        x = F.dropout(self.embeddings_norm(x), self.dropout, self.training)
        mask = padding_mask[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        # keras-hub computes the pooled [CLS] output too; LoVT never uses it.
        self.pooled = torch.tanh(self.pooled_dense(x[:, 0]))
        return x


def sentence_max_pool(token_features, sentence_ids, max_sentences: int):
    """``(B, T, D)`` token features -> ``(B, S, D)`` max over each sentence's tokens (0
    for absent sentences); ``sentence_ids`` -1 for special and padding tokens."""
    batch, _, dim = token_features.shape
    valid = (sentence_ids >= 0) & (sentence_ids < max_sentences)
    index = torch.where(valid, sentence_ids, max_sentences).long()  # slot S: a dummy
    pooled = token_features.new_full((batch, max_sentences + 1, dim), float("-inf"))
    pooled = pooled.scatter_reduce(1, index[..., None].expand(-1, -1, dim), token_features,
                                   reduce="amax", include_self=True)[:, :max_sentences]
    present = F.one_hot(index, max_sentences + 1).sum(1)[:, :max_sentences] > 0
    return torch.where(present[..., None], pooled, torch.zeros_like(pooled))


# --- LoVT heads


def masked_mean(features, mask=None):
    if mask is None:
        return features.mean(1)
    m = mask[..., None].to(features.dtype)
    return (features * m).sum(1) / m.sum(1).clamp(min=1.0)


def masked_max(features, mask):
    pooled = features.masked_fill(~mask[..., None], _MASKED_LOGIT).amax(1)
    return torch.where(mask.any(1, keepdim=True), pooled, torch.zeros_like(pooled))


def uniform_weights(features, mask=None):
    if mask is None:
        return features.new_full(features.shape[:2], 1.0 / features.shape[1])
    m = mask.to(features.dtype)
    return m / m.sum(1, keepdim=True).clamp(min=1.0)


class AttentionPooling(nn.Module):
    """Multi-head attention with the masked mean as the only query; returns the pooled
    ``(B, D)`` vector and the head-averaged weights ``(B, N)``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.output = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, features, mask=None):
        batch, n, dim = features.shape
        head_dim = dim // self.heads
        query = self.query(masked_mean(features, mask)[:, None])
        query = query.view(batch, 1, self.heads, head_dim).transpose(1, 2)
        keys = self.key(features).view(batch, n, self.heads, head_dim).transpose(1, 2)
        values = self.value(features).view(batch, n, self.heads, head_dim).transpose(1, 2)
        scores = query @ keys.transpose(-1, -2) / math.sqrt(head_dim)  # (B, h, 1, N)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None, :], _MASKED_LOGIT)
        weights = scores.softmax(-1)
        pooled = self.output((weights @ values).transpose(1, 2).reshape(batch, dim))
        weights = weights.float().mean(1)[:, 0]
        if mask is not None:
            weights = weights * mask
        return pooled, weights


class MaskedBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the last axis of ``(..., C)``; statistics over the rows where
    ``mask`` is True (all rows without a mask), applied to every row."""

    def forward(self, x, mask=None):
        # The moments by hand, as Keras' BatchNormalization: F.batch_norm saves its
        # running statistics for the backward pass, and a second call of the same layer
        # (the alignment's two directions) updates them in place.
        valid = (x.reshape(-1, x.shape[-1]) if mask is None else x[mask]).float()
        if self.training:
            mean, var = valid.mean(0), valid.var(0, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(valid.var(0), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        y = (x.float() - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias
        return y.to(x.dtype)


class ProjectionHead(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool):
        super().__init__()
        self.hidden = nn.Linear(in_dim, hidden_dim, bias=not batch_norm)
        self.norm = MaskedBatchNorm(hidden_dim, eps=1e-5) if batch_norm else None
        self.output = nn.Linear(hidden_dim, out_dim)

    def forward(self, x, mask=None):
        x = self.hidden(x)
        if self.norm is not None:
            x = self.norm(x, mask)
        return self.output(F.relu(x))


class CrossModalAlignment(nn.Module):
    """Symmetric attention between regions and sentences (one shared score matrix)."""

    def __init__(self, dim: int, batch_norm: bool):
        super().__init__()
        self.key, self.value, self.output = (nn.Linear(dim, dim) for _ in range(3))
        self.norm = MaskedBatchNorm(dim, eps=1e-5) if batch_norm else None

    def forward(self, regions, sentences, mask):
        scale = 1.0 / math.sqrt(regions.shape[-1])
        scores = torch.einsum("bnd,bsd->bns", self.key(regions), self.key(sentences))
        scores = scores.float() * scale
        alpha = scores.masked_fill(~mask[:, None, :], _MASKED_LOGIT).softmax(-1)
        alpha = alpha * mask.any(-1).float()[:, None, None]
        beta = scores.transpose(1, 2).softmax(-1) * mask.float()[..., None]
        sentence_values, region_values = self.value(sentences), self.value(regions)
        report_to_image = self.output(
            torch.einsum("bns,bsd->bnd", alpha.to(sentence_values.dtype), sentence_values))
        image_to_report = self.output(
            torch.einsum("bsn,bnd->bsd", beta.to(region_values.dtype), region_values))
        if self.norm is not None:
            report_to_image = self.norm(report_to_image)
            image_to_report = self.norm(image_to_report, mask)
        return report_to_image, image_to_report * mask[..., None].to(image_to_report.dtype)


# --- losses (lovt_keras.losses.contrastive)


def _l2_normalize(x):
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True).clamp(min=_NORM_EPSILON**2))


def _normalized_weights(weights, valid):
    weights = valid if weights is None else weights.detach().float() * valid
    return weights / weights.sum(-1, keepdim=True).clamp(min=_WEIGHT_EPSILON)


def global_contrastive_loss(image_global, report_global, temperature: float = 0.1) -> dict:
    image = _l2_normalize(image_global.float())
    report = _l2_normalize(report_global.float())
    logits = image @ report.T / temperature
    positives = (image * report).sum(-1) / temperature
    return {
        "global_image_to_report_loss": (logits.logsumexp(1) - positives).mean(),
        "global_report_to_image_loss": (logits.logsumexp(0) - positives).mean(),
    }


def spatial_positive_weights(grid_height: int, grid_width: int, distance_threshold: float = 0.5,
                             smooth_lambda: float = 1.0, smooth: bool = True) -> np.ndarray:
    """``(N, N)`` soft positive targets of the local image loss (rows sum to 1)."""
    rows, cols = np.divmod(np.arange(grid_height * grid_width), grid_width)
    squared = (rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2
    diagonal = grid_height**2 + grid_width**2
    threshold = Fraction(str(float(distance_threshold)))
    p, q = threshold.numerator, threshold.denominator
    positive = squared * q * q <= p * p * diagonal
    if smooth:
        distance = np.sqrt(squared.astype(np.float64)) / math.sqrt(diagonal)
        weights = np.where(positive, np.exp(-smooth_lambda * distance), 0.0)
    else:
        weights = positive.astype(np.float64)
    return (weights / weights.sum(1, keepdims=True)).astype(np.float32)


def local_image_loss(region_embeddings, report_to_image, region_weights, targets,
                     temperature: float = 0.3) -> dict:
    logits = torch.einsum("bid,bkd->bik", _l2_normalize(region_embeddings.float()),
                          _l2_normalize(report_to_image.float())) / temperature
    l2att = logits.logsumexp(-1) - (targets * logits).sum(-1)
    transposed = logits.transpose(1, 2)
    att2l = transposed.logsumexp(-1) - (targets * transposed).sum(-1)
    weights = _normalized_weights(region_weights, torch.ones_like(l2att))
    return {
        "local_image_l2att_loss": (weights * l2att).sum(-1).mean(),
        "local_image_att2l_loss": (weights * att2l).sum(-1).mean(),
    }


def local_report_loss(sentence_embeddings, image_to_report, sentence_mask, sentence_weights,
                      temperature: float = 0.3) -> dict:
    sentences = _l2_normalize(sentence_embeddings.float())
    attended = _l2_normalize(image_to_report.float())
    logits = torch.einsum("bjd,bkd->bjk", sentences, attended) / temperature
    positives = (sentences * attended).sum(-1) / temperature
    candidate_is_valid = sentence_mask[:, None, :]

    def directional(scores):
        return scores.masked_fill(~candidate_is_valid, _MASKED_LOGIT).logsumexp(-1) - positives

    weights = _normalized_weights(sentence_weights, sentence_mask.float())

    def reduce(per_anchor):
        return torch.where(sentence_mask, weights * per_anchor, 0.0).sum(-1).mean()

    return {
        "local_report_l2att_loss": reduce(directional(logits)),
        "local_report_att2l_loss": reduce(directional(logits.transpose(1, 2))),
    }


# --- the model


class LoVT(nn.Module):
    """The LoVT pretrainer of ``spec`` (see ``tools.bench.model_spec``)."""

    def __init__(self, spec: dict):
        super().__init__()
        image, report, head = spec["image"], spec["report"], spec["head"]
        self.head = head
        self.max_sentences = report["max_sentences"]
        self.image_encoder = ResNet(image["depth"], image["width"])
        self.report_encoder = Bert(**report["bert"])
        if report["freeze_embeddings"]:
            for module in (self.report_encoder.token_embedding,
                           self.report_encoder.position_embedding,
                           self.report_encoder.segment_embedding,
                           self.report_encoder.embeddings_norm):
                module.requires_grad_(False)
        for layer in self.report_encoder.layers[:report["num_frozen_layers"]]:
            layer.requires_grad_(False)
        self.report_encoder.pooled_dense.requires_grad_(False)

        region_dim = self.image_encoder.channels[head["image_feature_layer"]]
        sentence_dim = report["bert"]["hidden_dim"]
        grid = image["image_size"] // (32 if head["image_feature_layer"] == "conv5" else 16)
        self.grid_shape = (grid, grid)
        weights = {k: head[k] for k in ("global_loss_weight", "local_image_loss_weight",
                                        "local_report_loss_weight")}
        self.uses_global = weights["global_loss_weight"] > 0
        self.uses_local = weights["local_image_loss_weight"] > 0 or \
            weights["local_report_loss_weight"] > 0
        needs_pooling = self.uses_global or (self.uses_local
                                             and head["local_weighting"] == "attention")
        heads = head["num_pooling_heads"]
        self.image_pooling = (AttentionPooling(region_dim, heads)
                              if needs_pooling and head["image_pooling"] == "attention" else None)
        self.report_pooling = (AttentionPooling(sentence_dim, heads)
                               if needs_pooling and head["report_pooling"] == "attention" else None)

        def projection(in_dim):
            return ProjectionHead(in_dim, head["hidden_dim"], head["projection_dim"],
                                  head["projection_batch_norm"])

        if self.uses_global:
            self.image_global_projection = projection(region_dim)
            self.report_global_projection = projection(sentence_dim)
        if self.uses_local:
            self.image_local_projection = projection(region_dim)
            self.report_local_projection = projection(sentence_dim)
            self.alignment = CrossModalAlignment(head["projection_dim"],
                                                 head["alignment_batch_norm"])
        targets = spatial_positive_weights(*self.grid_shape, head["distance_threshold"],
                                           head["smooth_lambda"], head["spatial_smoothing"])
        self.register_buffer("targets", torch.from_numpy(targets), persistent=False)

    def forward(self, batch: dict) -> dict:
        head = self.head
        sentence_mask = batch["sentence_mask"]
        feature_map = self.image_encoder(batch["images"])[head["image_feature_layer"]]
        regions = feature_map.flatten(2).transpose(1, 2)  # (B, h*w, C), row-major
        tokens = self.report_encoder(batch["token_ids"], batch["padding_mask"])
        sentences = sentence_max_pool(tokens, batch["sentence_ids"], self.max_sentences)

        outputs = {}
        region_weights = uniform_weights(regions)
        sentence_weights = uniform_weights(sentences, sentence_mask)
        image_global = report_global = None
        if self.image_pooling is not None:
            image_global, region_weights = self.image_pooling(regions)
        elif self.uses_global:
            image_global = masked_mean(regions)
        if self.report_pooling is not None:
            report_global, sentence_weights = self.report_pooling(sentences, sentence_mask)
        elif self.uses_global and head["report_pooling"] == "token_max":
            report_global = masked_max(tokens, batch["padding_mask"])
        elif self.uses_global:
            report_global = masked_mean(sentences, sentence_mask)
        if self.uses_global:
            outputs["image_global"] = self.image_global_projection(image_global)
            outputs["report_global"] = self.report_global_projection(report_global)
        if self.uses_local:
            region_embeddings = self.image_local_projection(regions)
            sentence_embeddings = self.report_local_projection(sentences, sentence_mask)
            report_to_image, image_to_report = self.alignment(
                region_embeddings, sentence_embeddings, sentence_mask)
            outputs.update(region_embeddings=region_embeddings,
                           sentence_embeddings=sentence_embeddings,
                           report_to_image=report_to_image, image_to_report=image_to_report)
            if head["local_weighting"] == "attention":
                outputs.update(region_weights=region_weights, sentence_weights=sentence_weights)
        return outputs

    def loss(self, batch: dict, outputs: dict) -> tuple[torch.Tensor, dict]:
        """The weighted total and the named components (``LoVTPretrainer.LOSSES``)."""
        head, components, weights = self.head, {}, {}
        if head["global_loss_weight"] > 0:
            components.update(global_contrastive_loss(
                outputs["image_global"], outputs["report_global"], head["global_temperature"]))
            w = head["global_image_to_report_weight"]
            weights.update(global_image_to_report_loss=head["global_loss_weight"] * w,
                           global_report_to_image_loss=head["global_loss_weight"] * (1 - w))
        if head["local_image_loss_weight"] > 0:
            components.update(local_image_loss(
                outputs["region_embeddings"], outputs["report_to_image"],
                outputs.get("region_weights"), self.targets, head["local_temperature"]))
            half = head["local_image_loss_weight"] / 2
            weights.update(local_image_l2att_loss=half, local_image_att2l_loss=half)
        if head["local_report_loss_weight"] > 0:
            components.update(local_report_loss(
                outputs["sentence_embeddings"], outputs["image_to_report"],
                batch["sentence_mask"], outputs.get("sentence_weights"),
                head["local_temperature"]))
            half = head["local_report_loss_weight"] / 2
            weights.update(local_report_l2att_loss=half, local_report_att2l_loss=half)
        total = sum(weights[name] * value for name, value in components.items())
        return total, components


def weight_counts(model: nn.Module) -> tuple[int, int]:
    """(all weights, trainable weights), counted as Keras counts them: parameters plus
    the BatchNorm running statistics (not ``num_batches_tracked``)."""
    total = sum(p.numel() for p in model.parameters())
    total += sum(b.numel() for name, b in model.named_buffers()
                 if name.endswith(("running_mean", "running_var")))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def to_torch_batch(batch: dict[str, np.ndarray], device) -> dict[str, torch.Tensor]:
    """A ``lovt_keras`` batch (NHWC images) as torch tensors (NCHW images)."""
    return {
        "images": torch.from_numpy(np.ascontiguousarray(
            batch["images"].transpose(0, 3, 1, 2))).to(device),
        "token_ids": torch.from_numpy(batch["token_ids"].astype(np.int64)).to(device),
        "padding_mask": torch.from_numpy(batch["padding_mask"].astype(bool)).to(device),
        "sentence_ids": torch.from_numpy(batch["sentence_ids"].astype(np.int64)).to(device),
        "sentence_mask": torch.from_numpy(batch["sentence_mask"].astype(bool)).to(device),
    }


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def peak_device_bytes() -> int | None:
    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def time_matmul(size: int, repeats: int = 5) -> float:
    """Best time (s) of one float32 ``size x size`` ``torch.matmul`` (after a warm-up)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device())
    b = torch.randn(size, size, generator=generator).to(device())
    best = math.inf
    for i in range(repeats + 1):
        start = time.perf_counter()
        float((a @ b).sum())
        if i:
            best = min(best, time.perf_counter() - start)
    return best


def time_steps(spec: dict, batch: dict[str, np.ndarray], steps: int, warmup: int,
               mixed_precision: bool = False, compile_model: bool = False,
               learning_rate: float = 1e-4, weight_decay: float = 1e-6,
               memory: Callable[[], dict] | None = None) -> dict:
    """Times ``steps`` AdamW training steps of ``LoVT(spec)`` on ``batch`` after
    ``warmup`` untimed ones (the first one timed apart); returns the figures.

    ``memory`` (e.g. ``tools.bench.memory_bytes``) is read after the model and optimizer
    are built, after the first step and after the timed steps: the figures' ``memory``
    (``built``, ``first_step``, ``steps``)."""
    marks = {}
    read_memory = memory or (lambda: None)
    torch.manual_seed(0)
    where = device()
    model = LoVT(spec).to(where).train()
    total_weights, trainable = weight_counts(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=learning_rate, weight_decay=weight_decay, eps=1e-7)
    forward = torch.compile(model) if compile_model else model
    inputs = to_torch_batch(batch, where)
    marks["built"] = read_memory()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(where.type, dtype=torch.bfloat16, enabled=mixed_precision):
            outputs = forward(inputs)
            loss, _ = model.loss(inputs, outputs)
        loss.backward()
        optimizer.step()
        return float(loss.detach())  # waits for the device

    start = time.perf_counter()
    loss = step()
    first_step_s = time.perf_counter() - start
    marks["first_step"] = read_memory()
    for _ in range(warmup - 1):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    marks["steps"] = read_memory()
    return {"times_s": times, "first_step_s": first_step_s, "loss": loss,
            "memory": marks if memory else None,
            "weights": total_weights, "trainable_weights": trainable,
            "device": str(where), "torch_version": torch.__version__,
            "threads": torch.get_num_threads(), "peak_device_bytes": peak_device_bytes()}
