"""featcache.to_torch / featcache.preprocess: a fitted model as a plain torch module.

The module, fed ``preprocess(X, estimator)``, gives what the estimator's method gives (within
1e-4), traces and scripts with TorchScript, exports with torch.export and to ONNX, runs from
a saved TorchScript file in a process without featcache, and takes Grad-CAM.
"""

import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier, SGDClassifier
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.ensemble import RandomForestClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import FixedThresholdClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

import featcache
from featcache import FrozenBackbone, PartiallyFrozenClassifier, PartiallyFrozenRegressor
from featcache.exceptions import InvalidModelError
from featcache.probe import PriorShiftClassifier, fixed_threshold, tuned_threshold

SIZE = 64
TOL = 1e-4
# torch.jit.trace/script still work in torch 2.x but announce their deprecation
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One cache for the module: the backbone runs once per configuration, heads read it."""
    return tmp_path_factory.mktemp("deploy_cache")


def _backbone(cache_dir, **params):
    return FrozenBackbone(image_size=SIZE, cache=cache_dir, progress=False, **params)


def _run(module, x):
    with torch.no_grad():
        return module(x).numpy()


def _three_classes(labels):
    return np.where(np.arange(len(labels)) % 3 == 0, 2, labels)


HEADS = {
    "logistic-binary+scaler": (lambda: [StandardScaler(), LogisticRegression(max_iter=300)],
                               "predict_proba", False),
    "logistic-multinomial": (lambda: [LogisticRegression(max_iter=300)], "predict_proba", True),
    "ridge-classifier": (lambda: [StandardScaler(), RidgeClassifier()], "decision_function",
                         False),
    "ridge-classifier-multiclass": (lambda: [RidgeClassifier()], "decision_function", True),
    "linear-svc": (lambda: [StandardScaler(with_mean=False), LinearSVC()], "decision_function",
                   False),
    "mlp-relu-binary": (lambda: [StandardScaler(), MLPClassifier((16,), max_iter=50,
                                                                 random_state=0)],
                        "predict_proba", False),
    "mlp-tanh-multiclass": (lambda: [MLPClassifier((16, 8), activation="tanh", max_iter=50,
                                                   random_state=0)], "predict_proba", True),
    "mlp-logistic-binary": (lambda: [MLPClassifier((8,), activation="logistic", max_iter=50,
                                                   random_state=0)], "predict_proba", False),
    "ridge-regressor": (lambda: [StandardScaler(), Ridge()], "predict", False),
    "mlp-regressor": (lambda: [MLPRegressor(hidden_layer_sizes=(8,), activation="identity",
                                            max_iter=50, random_state=0)], "predict", False),
}


@pytest.mark.parametrize("name", HEADS)
def test_pipeline_module_equals_the_estimator(name, xray, cache_dir):
    images, labels = xray
    make, method, multiclass = HEADS[name]
    y = _three_classes(labels) if multiclass else labels
    if method == "predict":
        y = images.mean(axis=(1, 2)) / 255.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the tiny heads
        pipe = make_pipeline(_backbone(cache_dir), *make()).fit(images, y)
    module = featcache.to_torch(pipe)
    assert module.method == method and not module.training
    assert not any(p.requires_grad for p in module.parameters())
    want = getattr(pipe, method)(images)
    got = _run(module, featcache.preprocess(images, pipe))
    assert got.shape == want.shape
    assert np.abs(got - want).max() < TOL
    if method != "predict":
        assert list(module.classes_) == list(pipe.classes_)
        # predict: int64 indices into classes_, the class scikit-learn's predict gives
        labels = featcache.to_torch(pipe, method="predict")
        assert labels.method == "predict"
        index = _run(labels, featcache.preprocess(images, pipe))
        assert index.dtype == np.int64 and index.shape == (len(images),)
        np.testing.assert_array_equal(labels.classes_[index], pipe.predict(images))


def test_paths_end_to_end_with_torchscript(xray_pngs, tmp_path):
    """The default run's end-to-end check: PNG files, predict_proba, trace and script."""
    paths, labels = xray_pngs
    pipe = Pipeline([("backbone", _backbone(tmp_path / "cache")),
                     ("clf", LogisticRegression(max_iter=300))]).fit(paths, labels)
    module = featcache.to_torch(pipe)
    x = featcache.preprocess(paths, pipe)
    assert x.shape == (len(paths), 3, SIZE, SIZE) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    want = pipe.predict_proba(paths)
    assert np.abs(_run(module, x) - want).max() < TOL
    traced = torch.jit.trace(module, x[:4])
    assert np.abs(_run(traced, x) - want).max() < TOL
    scripted = torch.jit.script(module)
    assert np.abs(_run(scripted, x) - want).max() < TOL


def test_preprocess_is_what_the_engine_feeds_the_network(xray, cache_dir):
    """The tensor's features through FrozenBackbone's own extractor are transform's rows."""
    images, _ = xray
    backbone = _backbone(cache_dir).fit(images)
    x = featcache.preprocess(images[:8], backbone)
    module = featcache.to_torch(backbone)
    assert module.method == "transform"
    assert np.abs(_run(module, x) - backbone.transform(images[:8])).max() < TOL
    # 16-bit images go through the estimator's decode policy: its window, never clipped to 255
    wide = images[:4].astype(np.uint16) * 200
    windowed = _backbone(cache_dir, window=(20000, 30000)).fit(wide)
    x16 = featcache.preprocess(wide, windowed)
    assert float(x16.max()) <= 1 and float(x16.max()) > 0.9
    assert np.abs(x16.numpy() - featcache.preprocess(wide, backbone).numpy()).max() > 0.01
    got = _run(featcache.to_torch(windowed), x16)
    assert np.abs(got - windowed.transform(wide)).max() < TOL


@pytest.mark.parametrize("layer, pooling", [("blocks.4", "gem"), ("blocks.5", "max"),
                                            (None, "none")])
def test_named_layers_and_poolings(layer, pooling, xray, cache_dir):
    images, _ = xray
    backbone = _backbone(cache_dir, layer=layer, pooling=pooling).fit(images[:6])
    module = featcache.to_torch(backbone)
    want = backbone.transform(images[:6])
    assert np.abs(_run(module, featcache.preprocess(images[:6], backbone)) - want).max() < TOL


def test_a_torchvision_backbone_default_layer(xray, tmp_path):
    """The default layer of a torchvision network (the input of its global pooling), by FX."""
    images, labels = xray
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights
        pipe = make_pipeline(FrozenBackbone("resnet18", weights=None, image_size=SIZE,
                                            cache=tmp_path / "c", progress=False),
                             LogisticRegression(max_iter=300)).fit(images[::3], labels[::3])
        module = featcache.to_torch(pipe)
    got = _run(module, featcache.preprocess(images[::3], pipe))
    assert np.abs(got - pipe.predict_proba(images[::3])).max() < TOL


def _transformer_pipeline(model, xray, tmp_path, **params):
    """A LogisticRegression on a random-weights transformer's features of 8 x-rays."""
    images, labels = xray
    picked = np.r_[0:4, -4:0]  # both classes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights
        pipe = make_pipeline(FrozenBackbone(model, weights=None, cache=tmp_path / "c",
                                            progress=False, **params),
                             LogisticRegression(max_iter=300)).fit(images[picked],
                                                                   labels[picked])
        module = featcache.to_torch(pipe)
    x = featcache.preprocess(images[picked], pipe)
    return module, x, pipe.predict_proba(images[picked])


# A trace of a transformer keeps its input size (ViT's size check, Swin's padding) as
# constants: the module only ever takes image_size, so the trace holds for every batch.
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("layer, pooling", [(None, "cls"), ("blocks.5", "avg")])
def test_a_timm_vit(layer, pooling, xray, tmp_path):
    """timm's ViT-Tiny (its patch embedding takes its 224 px only): the class token of the
    final norm (default layer) and the mean of a block's tokens (a torch.fx cut); traced
    and scripted."""
    module, x, want = _transformer_pipeline("timm:vit_tiny_patch16_224", xray, tmp_path,
                                            layer=layer, pooling=pooling)
    assert x.shape[-1] == 224
    assert np.abs(_run(module, x) - want).max() < TOL
    # check_trace=False: the outputs are compared below (timm's check re-traces: +6 s)
    for compiled in (torch.jit.trace(module, x[:2], check_trace=False),
                     torch.jit.script(module)):
        assert np.abs(_run(compiled, x) - want).max() < TOL


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_a_torchvision_swin(xray, tmp_path):
    """torchvision's Swin-T at 64 px (its windows pad a small map): the default layer is the
    input of its global pooling, an NCHW map after its final norm and permute; traced,
    scripted, torch.export and ONNX Runtime (25-50 s)."""
    ort = pytest.importorskip("onnxruntime")
    module, x, want = _transformer_pipeline("torchvision:swin_t", xray, tmp_path,
                                            image_size=SIZE)
    assert np.abs(_run(module, x) - want).max() < TOL
    for compiled in (torch.jit.trace(module, x[:2], check_trace=False),
                     torch.jit.script(module)):
        assert np.abs(_run(compiled, x) - want).max() < TOL
    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = torch.export.export(module, (x[:4],), dynamic_shapes=({0: batch},))
    assert np.abs(_run(exported.module(), x) - want).max() < TOL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x[:2],), str(tmp_path / "swin.onnx"), dynamo=False,
                          input_names=["images"], dynamic_axes={"images": {0: "batch"}})
    session = ort.InferenceSession(str(tmp_path / "swin.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"images": x.numpy()})[0] - want).max() < TOL


@pytest.fixture(scope="module")
def logistic_pipeline(xray, cache_dir):
    images, labels = xray
    pipe = make_pipeline(_backbone(cache_dir), LogisticRegression(max_iter=300)).fit(images,
                                                                                     labels)
    return pipe, featcache.preprocess(images, pipe), pipe.predict_proba(images)


def _wrappers(pipe, images, labels):
    """Thresholded classifiers around the fitted pipeline, each at a point that moves some
    predictions (a quantile of its own scores), and a TunedThresholdClassifierCV."""
    p = pipe.predict_proba(images)
    d = pipe.decision_function(images)
    yield "fixed, probability", FixedThresholdClassifier(pipe,
                                                         threshold=np.quantile(p[:, 1], 0.3))
    yield "fixed, pos_label=classes_[0]", FixedThresholdClassifier(
        pipe, threshold=np.quantile(p[:, 0], 0.6), pos_label=pipe.classes_[0])
    yield "fixed, decision", FixedThresholdClassifier(
        pipe, threshold=np.quantile(d, 0.7), response_method="decision_function")
    yield "fixed, decision, pos_label=classes_[0]", FixedThresholdClassifier(
        pipe, threshold=np.quantile(-d, 0.4), response_method="decision_function",
        pos_label=pipe.classes_[0])
    tuned = tuned_threshold(pipe, sensitivity=0.95, cv=3).fit(images, labels)
    yield "tuned", tuned
    yield "fixed_threshold(tuned)", fixed_threshold(tuned)


def test_a_thresholded_classifier_deploys_its_operating_point(xray, cache_dir):
    """predict of FixedThresholdClassifier / TunedThresholdClassifierCV (response_method,
    pos_label, threshold) is the module's: classes_[module(x)] == predict(X); its
    probabilities and decision function are the wrapped model's."""
    images, labels = xray
    names = np.where(labels == 1, "pneumonia", "normal")  # labels as strings: indices out
    pipe = make_pipeline(_backbone(cache_dir), StandardScaler(),
                         LogisticRegression(max_iter=300, C=0.05)).fit(images, names)
    x = featcache.preprocess(images, pipe)
    plain = pipe.predict(images)
    for name, wrapper in _wrappers(pipe, images, names):
        want = wrapper.predict(images)
        assert (want != plain).any(), name  # the threshold matters here
        assert np.array_equal(featcache.preprocess(images, wrapper), x)
        module = featcache.to_torch(wrapper, method="predict")
        got = module.classes_[_run(module, x)]
        np.testing.assert_array_equal(got, want, err_msg=name)
    proba = featcache.to_torch(wrapper)  # "auto": the wrapped model's probabilities
    assert proba.method == "predict_proba"
    assert np.abs(_run(proba, x) - wrapper.predict_proba(images)).max() < TOL
    scores = featcache.to_torch(wrapper, method="decision_function")
    assert np.abs(_run(scores, x) - wrapper.decision_function(images)).max() < TOL
    scripted, traced = torch.jit.script(module), torch.jit.trace(module, x[:4])
    for compiled in (scripted, traced):
        np.testing.assert_array_equal(module.classes_[_run(compiled, x)], want)


def test_a_thresholded_ridge_classifier_thresholds_its_decision(xray, cache_dir):
    """response_method="auto" around a model without predict_proba is its decision function,
    threshold="auto" 0 there; asking for probabilities it lacks is refused."""
    images, labels = xray
    ridge = make_pipeline(_backbone(cache_dir), RidgeClassifier()).fit(images, labels)
    threshold = np.quantile(ridge.decision_function(images), 0.25)
    for wrapper in (FixedThresholdClassifier(ridge),
                    FixedThresholdClassifier(ridge, threshold=threshold)):
        module = featcache.to_torch(wrapper, method="predict")
        got = module.classes_[_run(module, featcache.preprocess(images, ridge))]
        np.testing.assert_array_equal(got, wrapper.predict(images))
    assert (got != ridge.predict(images)).any()
    with pytest.raises(ValueError, match=r"FixedThresholdClassifier\(response_method="
                                         r"'predict_proba'\) needs predict_proba of its "
                                         r"estimator.*set response_method"):
        featcache.to_torch(FixedThresholdClassifier(ridge, response_method="predict_proba"),
                           method="predict")
    with pytest.raises(ValueError, match=r"pos_label=7, which is not one of its estimator's "
                                         r"classes \[0, 1\]"):
        featcache.to_torch(FixedThresholdClassifier(ridge, pos_label=7), method="predict")
    sgd = make_pipeline(_backbone(cache_dir), SGDClassifier(loss="log_loss", random_state=0))
    with pytest.raises(ValueError, match=r"thresholds predict_proba of its estimator, which "
                                         r"featcache cannot deploy.*response_method"):
        featcache.to_torch(FixedThresholdClassifier(sgd.fit(images, labels)), method="predict")
    with pytest.raises(NotFittedError):
        featcache.to_torch(FixedThresholdClassifier(make_pipeline(_backbone(cache_dir),
                                                                  RidgeClassifier())))


@pytest.mark.parametrize("target_prior, multiclass", [(0.1, False), (0.95, False),
                                                      ([0.02, 0.02, 0.96], True)])
def test_a_prior_shift_classifier_deploys_its_reweighting(target_prior, multiclass, xray,
                                                          cache_dir):
    """PriorShiftClassifier: the module reweights the wrapped probabilities and renormalises
    them (== predict_proba within 1e-4); predict exactly (binary: threshold_ on the wrapped
    probability)."""
    images, labels = xray
    y = _three_classes(labels) if multiclass else labels
    pipe = make_pipeline(_backbone(cache_dir), StandardScaler(),
                         LogisticRegression(max_iter=300, C=0.05)).fit(images, y)
    shifted = PriorShiftClassifier(FrozenEstimator(pipe), target_prior=target_prior)
    shifted.fit(images, y)
    x = featcache.preprocess(images, shifted)
    want = shifted.predict_proba(images)
    assert np.abs(want - pipe.predict_proba(images)).max() > 0.05  # the shift matters here
    module = featcache.to_torch(shifted)
    assert module.method == "predict_proba" and list(module.classes_) == list(shifted.classes_)
    assert np.abs(_run(module, x) - want).max() < TOL
    labels_module = featcache.to_torch(shifted, method="predict")
    predicted = shifted.predict(images)
    assert (predicted != pipe.predict(images)).any()
    np.testing.assert_array_equal(labels_module.classes_[_run(labels_module, x)], predicted)
    if multiclass:
        scripted = torch.jit.script(module)
        assert np.abs(_run(scripted, x) - want).max() < TOL
        with pytest.raises(ValueError, match=r"method='decision_function' is not available "
                                             r"for a PriorShiftClassifier"):
            featcache.to_torch(shifted, method="decision_function")


def test_torch_export(logistic_pipeline, xray):
    pipe, x, want = logistic_pipeline
    module = featcache.to_torch(pipe)
    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = torch.export.export(module, (x[:4],), dynamic_shapes=({0: batch},))
    assert np.abs(_run(exported.module(), x) - want).max() < TOL
    point = FixedThresholdClassifier(pipe, threshold=np.quantile(want[:, 1], 0.4))
    labels = featcache.to_torch(point, method="predict")
    exported = torch.export.export(labels, (x[:4],), dynamic_shapes=({0: batch},))
    np.testing.assert_array_equal(labels.classes_[_run(exported.module(), x)],
                                  point.predict(xray[0]))


def test_onnx_export_runs_in_onnxruntime(logistic_pipeline, xray, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pipe, x, want = logistic_pipeline
    module = featcache.to_torch(pipe)
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(module, (x[:2],), str(path), dynamo=False, input_names=["images"],
                          output_names=["probabilities"],
                          dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": x.numpy()})
    assert got.shape == want.shape
    assert np.abs(got - want).max() < TOL
    point = FixedThresholdClassifier(pipe, threshold=np.quantile(want[:, 1], 0.4))
    labels = featcache.to_torch(point, method="predict")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(labels, (x[:2],), str(tmp_path / "labels.onnx"), dynamo=False,
                          input_names=["images"], dynamic_axes={"images": {0: "batch"}})
    session = ort.InferenceSession(str(tmp_path / "labels.onnx"),
                                   providers=["CPUExecutionProvider"])
    (index,) = session.run(None, {"images": x.numpy()})
    np.testing.assert_array_equal(labels.classes_[index], point.predict(xray[0]))


def test_saved_torchscript_runs_without_featcache(logistic_pipeline, tmp_path):
    pipe, x, want = logistic_pipeline
    module = featcache.to_torch(pipe)
    path, inputs, out = tmp_path / "model.pt", tmp_path / "x.pt", tmp_path / "out.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    torch.save(x, inputs)
    code = ("import sys, torch; m = torch.jit.load(sys.argv[1]); x = torch.load(sys.argv[2]); "
            "torch.save(m(x), sys.argv[3]); "
            "assert 'featcache' not in sys.modules and 'timm' not in sys.modules, "
            "sorted(k for k in sys.modules if 'featcache' in k or 'timm' in k)")
    done = subprocess.run([sys.executable, "-c", code, str(path), str(inputs), str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.abs(torch.load(out).numpy() - want).max() < TOL


def test_grad_cam_recipe(logistic_pipeline):
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    pipe, x, _ = logistic_pipeline
    module = featcache.to_torch(pipe)
    picked = x[::10]  # both classes
    maps = {}
    with GradCAM(model=module, target_layers=[module.cam_layer()]) as cam:
        for label in (0, 1):
            images = picked.clone().requires_grad_(True)  # the module's weights are frozen
            maps[label] = cam(input_tensor=images,
                              targets=[ClassifierOutputTarget(label)] * len(picked))
    for label in (0, 1):
        assert maps[label].shape == (len(picked), SIZE, SIZE)
        assert np.isfinite(maps[label]).all() and (maps[label] >= 0).all()
    # A linear head on average-pooled features: Grad-CAM is the head's evidence per position,
    # clipped at 0, so where every position argues against a class its map is all zero; the
    # evidence for one of the two classes varies over the image.
    for i in range(len(picked)):
        assert any(maps[label][i].max() > maps[label][i].min() for label in (0, 1)), i


def _partial_toy():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 200, size=(32, 32, 32, 3), dtype=np.uint8)
    y = np.array(["normal", "pneumonia"] * 16)
    X[y == "normal", :10] = 255
    return X, y


@pytest.mark.parametrize("trainable_blocks, cache_dtype", [(1, "float16"), (0, "float32")])
def test_partially_frozen_classifier(trainable_blocks, cache_dtype, tmp_path):
    X, y = _partial_toy()
    clf = PartiallyFrozenClassifier(trainable_blocks=trainable_blocks, image_size=32,
                                    max_epochs=1, batch_size=16, cache=tmp_path / "c",
                                    cache_dtype=cache_dtype, random_state=0,
                                    progress=False).fit(X, y)
    module = featcache.to_torch(clf)
    x = featcache.preprocess(X, clf)
    assert np.abs(_run(module, x) - clf.predict_proba(X)).max() < TOL
    decision = featcache.to_torch(clf, method="decision_function")
    assert np.abs(_run(decision, x) - clf.decision_function(X)).max() < TOL
    assert list(module.classes_) == list(clf.classes_)
    assert module.cam_layer() is (module.head.stages[-1] if trainable_blocks else module.backbone)
    traced = torch.jit.trace(module, x[:2])
    assert np.abs(_run(traced, x) - clf.predict_proba(X)).max() < TOL
    if not trainable_blocks:
        return
    # the benchmark's recipe: an operating point around a PartiallyFrozenClassifier
    labels = featcache.to_torch(clf, method="predict")
    np.testing.assert_array_equal(labels.classes_[_run(labels, x)], clf.predict(X))
    point = FixedThresholdClassifier(clf, threshold=np.median(clf.predict_proba(X)[:, 1]))
    labels = featcache.to_torch(point, method="predict")
    np.testing.assert_array_equal(labels.classes_[_run(labels, x)], point.predict(X))
    shifted = PriorShiftClassifier(FrozenEstimator(clf), target_prior=0.8).fit(X, y)
    assert np.abs(_run(featcache.to_torch(shifted), x) - shifted.predict_proba(X)).max() < TOL
    labels = featcache.to_torch(shifted, method="predict")
    np.testing.assert_array_equal(labels.classes_[_run(labels, x)], shifted.predict(X))


@pytest.mark.slow
def test_partially_frozen_exports(tmp_path):
    """Script, torch.export and ONNX of a tail with trained stages (10-22 s)."""
    ort = pytest.importorskip("onnxruntime")
    X, y = _partial_toy()
    clf = PartiallyFrozenClassifier(trainable_blocks=2, image_size=32, max_epochs=1,
                                    batch_size=16, cache=tmp_path / "c", random_state=0,
                                    progress=False).fit(X, y)
    module, x, want = featcache.to_torch(clf), featcache.preprocess(X, clf), clf.predict_proba(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(module)
        torch.onnx.export(module, (x[:2],), str(tmp_path / "m.onnx"), dynamo=False,
                          input_names=["images"], dynamic_axes={"images": {0: "batch"}})
    assert np.abs(_run(scripted, x) - want).max() < TOL
    exported = torch.export.export(module, (x[:4],))
    assert np.abs(_run(exported.module(), x[:4]) - want[:4]).max() < TOL
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"images": x.numpy()})[0] - want).max() < TOL


def test_partially_frozen_regressor(tmp_path):
    X, _ = _partial_toy()
    target = X[:, :10].mean(axis=(1, 2, 3)) / 255.0
    for y in (target, np.c_[target, -target]):
        reg = PartiallyFrozenRegressor(trainable_blocks=1, image_size=32, max_epochs=1,
                                       batch_size=16, cache=tmp_path / "c", random_state=0,
                                       progress=False).fit(X, y)
        module = featcache.to_torch(reg)
        want = reg.predict(X)
        got = _run(module, featcache.preprocess(X, reg))
        assert got.shape == want.shape and np.abs(got - want).max() < TOL


def test_test_time_augmentation_is_refused_with_the_fix(tmp_path):
    X, y = _partial_toy()
    clf = PartiallyFrozenClassifier(trainable_blocks=0, image_size=32, max_epochs=1,
                                    batch_size=16, cache=tmp_path / "c", random_state=0,
                                    tta_views=1, progress=False).fit(X, y)
    with pytest.raises(ValueError, match=r"tta_views=1: .*content key.*"
                                         r"to_torch\(estimator\.set_params\(tta_views=0\)\)"):
        featcache.to_torch(clf)
    module = featcache.to_torch(clf.set_params(tta_views=0))  # no refit: the single view
    want = clf.predict_proba(X)
    assert np.abs(_run(module, featcache.preprocess(X, clf)) - want).max() < TOL


def test_a_prefix_whose_weights_changed_since_fit_is_refused(tmp_path):
    from featcache.backbones import get_backbone
    from featcache.backbones.loading import build_network

    network, _, _ = build_network(get_backbone("efficientnet_lite0"), "DEFAULT", progress=False)
    state = {k: v.clone() for k, v in network.state_dict().items()}
    weights = tmp_path / "lite0.pt"
    torch.save(state, weights)
    X, y = _partial_toy()
    clf = PartiallyFrozenClassifier(weights=str(weights), trainable_blocks=1, image_size=32,
                                    max_epochs=1, batch_size=16, cache=tmp_path / "c",
                                    random_state=0, progress=False).fit(X, y)
    module = featcache.to_torch(clf)  # the same file: deployed, equal to the estimator
    want = clf.predict_proba(X)
    assert np.abs(_run(module, featcache.preprocess(X, clf)) - want).max() < TOL
    state["conv_stem.weight"] *= 1.01  # a prefix layer: other weights under the same name
    torch.save(state, weights)
    with pytest.raises(featcache.FeatcacheError,
                       match=r"the frozen prefix loaded now differs from the one "
                             r"PartiallyFrozenClassifier was fitted with \(fingerprint "
                             rf"{clf.prefix_fingerprint_} at fit, \w+ now; weights digest now "
                             r"\w+\): its weights file .* changed since fit.*Refit before "
                             r"deploying"):
        featcache.to_torch(clf)


def test_the_fit_precision_is_recorded_and_used_old_fits_fall_back(tmp_path):
    """prefix_precision_ (the precision the prefix ran in at fit) is what to_torch checks the
    prefix under; a fit pickled before it was recorded lacks it and is still deployed (each
    precision is tried); a value that is no precision is refused before use."""
    X, y = _partial_toy()
    clf = PartiallyFrozenClassifier(trainable_blocks=0, image_size=32, max_epochs=1,
                                    batch_size=16, cache=tmp_path / "c", precision="bf16",
                                    random_state=0, progress=False).fit(X, y)
    assert clf.prefix_precision_ == "bf16"  # bf16 autocast runs on a CPU too
    x, want = featcache.preprocess(X, clf), clf.predict_proba(X)
    old = pickle.loads(pickle.dumps(clf))
    del old.__dict__["prefix_precision_"]
    for est in (clf, old):
        with pytest.warns(UserWarning, match="computed its features in bf16"):
            module = featcache.to_torch(est)
        assert np.abs(_run(module, x) - want).max() < 0.05  # bf16's rounding, not 1e-4
    forged = pickle.loads(pickle.dumps(clf))
    forged.prefix_precision_ = "fp32"  # used as recorded: no search finds bf16 instead
    with pytest.raises(featcache.FeatcacheError,
                       match=r"the frozen prefix loaded now differs .*Refit before deploying"):
        featcache.to_torch(forged)
    forged.prefix_precision_ = "fp64"
    with pytest.raises(InvalidModelError, match=r"prefix_precision_='fp64'; expected one of "
                                                r"\('fp32', 'bf16', 'fp16'\).*trust"):
        featcache.to_torch(forged)


def test_what_cannot_be_deployed_says_so(xray, cache_dir):
    images, labels = xray
    with pytest.raises(NotFittedError):
        featcache.to_torch(make_pipeline(_backbone(cache_dir), LogisticRegression()))
    with pytest.raises(TypeError, match="cannot deploy a LogisticRegression"):
        featcache.to_torch(LogisticRegression().fit(np.eye(2), [0, 1]))
    forest = make_pipeline(_backbone(cache_dir), RandomForestClassifier(n_estimators=2))
    with pytest.raises(TypeError, match="RandomForestClassifier head"):
        featcache.to_torch(forest.fit(images, labels))
    ridge = make_pipeline(_backbone(cache_dir), RidgeClassifier()).fit(images, labels)
    with pytest.raises(ValueError, match="use method='decision_function'"):
        featcache.to_torch(ridge, method="predict_proba")
    sgd = make_pipeline(_backbone(cache_dir), SGDClassifier(loss="log_loss", random_state=0))
    sgd.fit(images, labels)
    with pytest.raises(ValueError, match="method='decision_function'"):
        featcache.to_torch(sgd)
    scores = featcache.to_torch(sgd, method="decision_function")
    got = _run(scores, featcache.preprocess(images, sgd))
    assert np.abs(got - sgd.decision_function(images)).max() < TOL * max(1, np.abs(got).max())
    with pytest.raises(ValueError, match="method="):
        featcache.to_torch(ridge, method="proba")


def test_nothing_in_featcache_imports_deploy():
    """featcache.deploy sits above the estimators: only featcache's lazy public names reach it."""
    import ast
    from pathlib import Path

    package = Path(featcache.__file__).parent
    found = []
    for path in package.rglob("*.py"):
        if "deploy" in path.relative_to(package).parts or path == package / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or "", *(a.name for a in node.names)] \
                if isinstance(node, ast.ImportFrom) else []
            if any(n == "deploy" or "deploy" in n.split(".") for n in names):
                found.append(f"{path.relative_to(package)}:{node.lineno}")
    assert not found, found
