"""Training on cached activations gives the model the classic frozen-prefix fine-tune gives."""

import copy

import numpy as np
import pytest
import torch

from featcache import PartiallyFrozenClassifier
from featcache.backbones import get_backbone, stage_layout
from featcache.partial.network import pretrained_network
from partial_reference import FrozenPrefix, classic_inputs
from featcache.partial.tail import build_tail, tail_state
from featcache.partial.training import TrainingConfig, predict_outputs, train_tail

SIZE = 32


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(1)
    X = rng.integers(0, 200, size=(40, SIZE, SIZE, 3), dtype=np.uint8)
    y = np.arange(40) % 2
    X[y == 0, :10] = 255
    return X, y


@pytest.mark.parametrize("trainable_blocks", [0, 2])
def test_caching_changes_speed_not_the_model(tmp_path, toy, trainable_blocks):
    """Same seed, float32 cache, no augmentation: the same tail as recomputing the prefix."""
    X, y = toy
    clf = PartiallyFrozenClassifier(trainable_blocks=trainable_blocks, image_size=SIZE,
                                    max_epochs=3, batch_size=8, cache=tmp_path / "c",
                                    cache_dtype="float32", random_state=0, progress=False)
    clf.fit(X, y)
    # The classic way: the pretrained network, BatchNorm not folded, frozen with
    # requires_grad_(False) and eval(), recomputed on every batch of every epoch; its tail
    # is an exact copy of the network's stages (torch's own depthwise convolutions).
    spec = get_backbone("efficientnet_lite0")
    network = pretrained_network(spec, "DEFAULT")
    layout = stage_layout(network)
    prefix = FrozenPrefix(copy.deepcopy(network), clf.cut_layer_, spec.preprocessing.mean,
                          spec.preprocessing.std)
    seed = int(np.random.RandomState(0).randint(2**31 - 1))
    tail = build_tail(network, layout.tail_modules(trainable_blocks), layout.pool, clf.row_shape_,
                      2, seed=seed, fast_depthwise=False)
    assert not any(type(m).__name__ == "DepthwiseConv2d" for m in tail.modules())
    config = clf._training_config(clf._run_options(), seed)
    inputs = classic_inputs(prefix, X, pooling=None if trainable_blocks else layout.pool)
    result = train_tail(tail, inputs, torch.as_tensor(y), np.arange(len(X)), None,
                        loss_fn=torch.nn.functional.cross_entropy, score_fn=None, config=config)
    np.testing.assert_allclose(result.loss_curve, clf.loss_curve_, rtol=1e-4)
    cached, classic = clf.tail_state_, tail_state(tail)
    assert cached.keys() == classic.keys()
    for name in cached:
        np.testing.assert_allclose(cached[name], classic[name], atol=5e-4, err_msg=name)
    logits = predict_outputs(tail, inputs, np.arange(len(X)), config)
    proba = torch.softmax(torch.from_numpy(logits), 1).numpy()
    np.testing.assert_allclose(clf.predict_proba(X), proba, atol=1e-4)


def test_training_config_rates_and_schedule(toy):
    """The head gets its own rate; both follow a cosine to zero over max_epochs."""
    network = pretrained_network(get_backbone("efficientnet_lite0"), "DEFAULT")
    layout = stage_layout(network)
    tail = build_tail(network, layout.tail_modules(1), layout.pool, (192, 1, 1), 2)
    rows = np.random.default_rng(0).standard_normal((16, 192, 1, 1)).astype(np.float32)
    config = TrainingConfig(max_epochs=2, batch_size=8, learning_rate=1e-4, head_learning_rate=1e-2)
    seen = []
    real = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append([g["lr"] for g in self.param_groups])
        return real(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        train_tail(tail, lambda pos, views: rows[pos], torch.zeros(16, dtype=torch.long),
                   np.arange(16), loss_fn=torch.nn.functional.cross_entropy, score_fn=None,
                   config=config)
    finally:
        torch.optim.AdamW.step = real
    assert seen[0] == pytest.approx([1e-4, 1e-2])
    assert len(seen) == 4 and seen[-1][0] < seen[0][0] / 2


def test_batchnorm_frozen_keeps_running_statistics(toy):
    network = pretrained_network(get_backbone("efficientnet_lite0"), "DEFAULT")
    layout = stage_layout(network)
    rows = np.random.default_rng(0).standard_normal((16, 192, 1, 1)).astype(np.float32) * 3
    stats = {}
    for mode in ("frozen", "train"):
        tail = build_tail(network, layout.tail_modules(1), layout.pool, (192, 1, 1), 2,
                          batchnorm=mode)
        before = tail_state(tail)
        train_tail(tail, lambda pos, views: rows[pos], torch.zeros(16, dtype=torch.long),
                   np.arange(16), loss_fn=torch.nn.functional.cross_entropy, score_fn=None,
                   config=TrainingConfig(max_epochs=1, batch_size=8))
        after = tail_state(tail)
        stats[mode] = max(float(np.abs(after[k] - before[k]).max())
                          for k in before if k.endswith("running_mean"))
    assert stats["frozen"] == 0.0 and stats["train"] > 0.0
