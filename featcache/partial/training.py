"""Training a tail on cached activations: AdamW, a cosine schedule, early stopping.

:func:`train_tail` takes its inputs from a callable ``inputs(positions, views) -> rows``, so
the same loop trains on cached activations (:class:`~featcache.partial.activations.ActivationSet`)
or on activations recomputed by a frozen prefix every step (the classic way, which the
equivalence test and the benchmark compare against).
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..engine.progress import progress_bar
from ..exceptions import NonFiniteError

__all__ = ["TrainingConfig", "TrainingResult", "train_tail", "predict_outputs", "to_device"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class TrainingConfig:
    """How a tail is trained (see the estimators' parameters)."""

    max_epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 3e-4
    head_learning_rate: float = 3e-3
    weight_decay: float = 0.01
    n_iter_no_change: int = 5
    tol: float = 1e-4
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    progress: bool | None = False


@dataclass
class TrainingResult:
    """What :func:`train_tail` did."""

    loss_curve: list = field(default_factory=list)
    validation_scores: list | None = None
    best_epoch: int = 0
    n_iter: int = 0
    epoch_seconds: list = field(default_factory=list)


def to_device(rows, device) -> torch.Tensor:
    """Rows (an array, or a tensor already sliced on a device) as a float32 tensor on
    ``device`` (feature maps laid out channels-last)."""
    if isinstance(rows, torch.Tensor):
        x = rows.to(device, torch.float32)
    else:
        x = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).to(device)
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def _place(tail, device: torch.device) -> None:
    """Move ``tail`` to ``device``, convolution weights laid out channels-last like the rows."""
    tail.to(device)
    if any(p.ndim == 4 for p in tail.parameters()):
        tail.to(memory_format=torch.channels_last)


@contextlib.contextmanager
def _deterministic(device: torch.device):
    """cuDNN's deterministic kernels while a tail trains on a CUDA device (the caller's
    settings restored after): the same seed on the same machine gives the same weights there
    too, as it does on a CPU."""
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = saved


def _optimizer(tail, config: TrainingConfig):
    groups = [{"params": [p for p in tail.stages.parameters()], "lr": config.learning_rate},
              {"params": list(tail.head.parameters()), "lr": config.head_learning_rate}]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def train_tail(tail, inputs, targets, train_idx, val_idx=None, *, loss_fn, score_fn,
               config: TrainingConfig, n_views: int = 1) -> TrainingResult:
    """Train ``tail`` in place; with ``val_idx``, keep the weights of the best validation epoch.

    Parameters
    ----------
    tail : featcache.partial.tail.Tail
    inputs : callable
        ``inputs(positions, views) -> float32 rows``; ``views`` is None or one view per row.
    targets : Tensor
        Targets of every position (class indices, or float values).
    train_idx, val_idx : arrays of positions
    loss_fn : callable
        ``loss_fn(outputs, targets) -> scalar tensor``.
    score_fn : callable
        ``score_fn(outputs ndarray, targets ndarray) -> float``, higher is better.
    config : TrainingConfig
    n_views : int
        Views per position; each epoch draws one per position.

    Raises
    ------
    NonFiniteError
        When an epoch's mean loss is NaN or infinite (training diverged).
    """
    device = torch.device(config.device)
    dtype = _DTYPES[config.precision]
    _place(tail, device)
    optimizer = _optimizer(tail, config)
    steps = config.max_epochs * max(1, -(-len(train_idx) // config.batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    on_device = targets.to(device)
    result = TrainingResult(validation_scores=[] if val_idx is not None else None)
    best_state, best_score, stale = None, -np.inf, 0
    # Counted in batches (a long epoch is no silent stretch in a batch job's log).
    bar = progress_bar(steps, "featcache training", config.progress, unit="batch")
    # The caller's random state (the CUDA device's too, when training there) is left as it was.
    forked = [] if device.type != "cuda" else [
        device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=forked), _deterministic(device):
        torch.manual_seed(config.seed)
        try:
            for epoch in range(config.max_epochs):
                start = time.perf_counter()
                rng = np.random.default_rng([config.seed, epoch])
                order = rng.permutation(np.asarray(train_idx))
                views = rng.integers(0, n_views, len(order)) if n_views > 1 else None
                tail.train()
                last = {"loss": f"{result.loss_curve[-1]:.4g}"} if result.loss_curve else {}
                bar.set_postfix(epoch=f"{epoch + 1}/{config.max_epochs}", **last, refresh=False)
                # Summed on the device: a float() per step would wait for the GPU every step.
                total = torch.zeros((), dtype=torch.float64, device=device)
                for lo in range(0, len(order), config.batch_size):
                    pos = order[lo:lo + config.batch_size]
                    x = to_device(inputs(pos, None if views is None else views[lo:lo + len(pos)]),
                                  device)
                    with autocast:
                        out = tail(x)
                    loss = loss_fn(out.float(), on_device[torch.as_tensor(pos, device=device)])
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    schedule.step()
                    total += loss.detach().double() * len(pos)
                    bar.update(1)
                result.loss_curve.append(float(total) / max(1, len(order)))
                if not np.isfinite(result.loss_curve[-1]):
                    raise NonFiniteError(
                        f"the training loss became {result.loss_curve[-1]} in epoch {epoch + 1} "
                        "on finite rows: training diverged. Lower learning_rate (and "
                        "head_learning_rate), or train with precision='fp32'.")
                result.epoch_seconds.append(time.perf_counter() - start)
                result.n_iter = epoch + 1
                bar.set_postfix(epoch=f"{epoch + 1}/{config.max_epochs}",
                                loss=f"{result.loss_curve[-1]:.4g}", refresh=False)
                if val_idx is None:
                    result.best_epoch = epoch + 1
                    continue
                score = score_fn(predict_outputs(tail, inputs, val_idx, config),
                                 targets[val_idx].numpy())
                result.validation_scores.append(score)
                if score > best_score + config.tol:
                    best_state, best_score, stale = copy.deepcopy(tail.state_dict()), score, 0
                    result.best_epoch = epoch + 1
                else:
                    stale += 1
                    if stale >= config.n_iter_no_change:
                        break
        finally:
            bar.close()
    if best_state is not None:
        tail.load_state_dict(best_state)
    tail.eval()
    return result


def predict_outputs(tail, inputs, positions, config: TrainingConfig) -> np.ndarray:
    """The tail's float32 outputs for ``positions`` (view 0), in evaluation mode."""
    device = torch.device(config.device)
    dtype = _DTYPES[config.precision]
    was_training = tail.training
    _place(tail, device)  # a tail rebuilt or fitted elsewhere lives on the CPU
    tail.eval()
    parts = []
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype,
                                                    enabled=dtype != torch.float32):
            for lo in range(0, len(positions), config.batch_size):
                pos = np.asarray(positions[lo:lo + config.batch_size])
                parts.append(tail(to_device(inputs(pos, None), device)).float().cpu().numpy())
    finally:
        tail.train(was_training)
    width = tail.head.out_features
    return np.concatenate(parts) if parts else np.zeros((0, width), np.float32)
