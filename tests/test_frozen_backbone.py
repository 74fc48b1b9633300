"""Tests for featcache.frozen_backbone.FrozenBackbone: the scikit-learn face."""

import json
import pickle
import subprocess
import sys
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils import estimator_checks

from featcache import FrozenBackbone
from featcache.exceptions import FeatcacheError, InputError

SMALL = dict(image_size=32, cache=False, progress=False)


def small(**params):
    return FrozenBackbone(**{**SMALL, **params})


def test_every_input_form_gives_one_float32_row_per_image(xray, xray_pngs):
    images, _ = xray
    images = images[:6]
    paths = xray_pngs[0][:6]
    backbone = small().fit(images)
    reference = backbone.transform(images)
    assert reference.shape == (6, 1280) and reference.dtype == np.float32
    assert np.isfinite(reference).all()
    forms = {
        "paths": paths,
        "(n, 1) object array of paths": np.array(paths, dtype=object).reshape(-1, 1),
        "(n, H, W, 3)": np.repeat(images[..., None], 3, axis=-1),
        "PIL images": [Image.fromarray(img) for img in images],
        "torch tensor (n, C, H, W)": torch.from_numpy(images[:, None].copy()),
    }
    for name, X in forms.items():
        np.testing.assert_allclose(backbone.transform(X), reference, atol=1e-5, err_msg=name)
    # 16-bit and float are scaled by their range: a uint16 copy of the image stretched over
    # the full range embeds like the 8-bit one stretched over [0, 1].
    stretched = images.astype(np.float64)
    lo = stretched.min(axis=(1, 2), keepdims=True)
    hi = stretched.max(axis=(1, 2), keepdims=True)
    unit = (stretched - lo) / (hi - lo)
    as_uint16 = np.round(unit * 65535).astype(np.uint16)
    np.testing.assert_allclose(backbone.transform(as_uint16), backbone.transform(unit.astype(np.float32)),
                               atol=1e-3)


def test_pipeline_fits_and_predicts(xray):
    images, labels = xray
    pipe = Pipeline([("backbone", small()), ("clf", LogisticRegression(max_iter=1000))])
    pipe.fit(images[::2], labels[::2])
    proba = pipe.predict_proba(images[1::2])
    assert proba.shape == (30, 2)
    assert pipe.score(images[1::2], labels[1::2]) > 0.6


def test_fit_only_loads_and_fit_transform_extracts_once(xray, monkeypatch):
    images, _ = xray
    import featcache.engine.batches as engine

    calls = []
    real = engine.run_batches

    def counting(*args, **kwargs):
        calls.append(len(args[2]))
        yield from real(*args, **kwargs)

    monkeypatch.setattr(engine, "run_batches", counting)
    backbone = small()
    assert backbone.fit(images[:4]) is backbone and calls == []
    assert backbone.n_features_out_ == 1280 and len(backbone.fingerprint_) == 20
    backbone.fit_transform(images[:4])
    assert calls == [4]


def test_params_clone_and_set_params():
    backbone = FrozenBackbone(pooling="max", batch_size=8)
    params = backbone.get_params()
    assert params["pooling"] == "max" and params["model"] == "efficientnet_lite0"
    twin = clone(backbone)
    assert twin.get_params() == params and twin is not backbone
    twin.set_params(pooling="gem", image_size=64)
    assert twin.pooling == "gem" and backbone.pooling == "max"


def test_pickle_and_joblib_round_trip_give_identical_outputs(xray, tmp_path):
    images, _ = xray
    backbone = small().fit(images[:4])
    before = backbone.transform(images[:4])
    restored = pickle.loads(pickle.dumps(backbone))
    np.testing.assert_array_equal(restored.transform(images[:4]), before)
    joblib.dump(backbone, tmp_path / "backbone.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "backbone.joblib").transform(images[:4]), before)
    assert len(pickle.dumps(backbone)) < 20_000, "the torch network must not be pickled"


def test_feature_names_and_pandas_output(xray):
    pd = pytest.importorskip("pandas")
    images, _ = xray
    backbone = small().fit(images[:3])
    names = backbone.get_feature_names_out()
    assert len(names) == 1280 and names[0] == "frozenbackbone0"
    frame = small().set_output(transform="pandas").fit_transform(images[:3])
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == list(names)


def test_dataframe_column_of_paths_sets_feature_names_in(xray_pngs):
    pd = pytest.importorskip("pandas")
    paths, _ = xray_pngs
    frame = pd.DataFrame({"image_path": paths[:3]})
    backbone = small().fit(frame)
    assert list(backbone.feature_names_in_) == ["image_path"] and backbone.n_features_in_ == 1
    assert backbone.transform(frame).shape == (3, 1280)


@pytest.mark.parametrize("params, match", [
    ({"pooling": "median"}, "pooling"),
    ({"batch_size": 0}, "batch_size"),
    ({"precision": "fp8"}, "precision"),
    ({"on_error": "ignore"}, "on_error"),
    ({"image_size": 2}, "image_size"),
    ({"num_workers": -1}, "num_workers"),
    ({"verify_inputs": "mtime"}, "verify_inputs"),
])
def test_bad_parameters_raise_invalid_parameter_error(params, match, xray):
    with pytest.raises(InvalidParameterError, match=match):
        FrozenBackbone(**params).fit(xray[0][:2])


def test_unusable_device_and_unknown_model_are_featcache_errors(xray):
    if not torch.cuda.is_available():
        with pytest.raises(FeatcacheError, match="CUDA is not available"):
            small(device="cuda").fit(xray[0][:2])
    with pytest.raises(FeatcacheError, match="unknown backbone 'resnet5'"):
        small(model="resnet5").fit(xray[0][:2])


def test_not_fitted_error_before_fit(xray):
    with pytest.raises(NotFittedError):
        FrozenBackbone().transform(xray[0][:2])


def test_changed_parameters_without_refit_are_refused(xray):
    backbone = small().fit(xray[0][:2])
    backbone.set_params(pooling="max")
    with pytest.raises(FeatcacheError, match="configuration changed since fit"):
        backbone.transform(xray[0][:2])


def test_grid_search_over_head_and_pooling(xray):
    images, labels = xray
    pipe = Pipeline([("backbone", small()), ("clf", LogisticRegression(max_iter=500))])
    search = GridSearchCV(pipe, {"clf__C": [0.1, 1.0], "backbone__pooling": ["avg", "max"]}, cv=2)
    search.fit(images, labels)
    assert set(search.best_params_) == {"clf__C", "backbone__pooling"}
    assert search.cv_results_["mean_test_score"].shape == (4,)


def test_bad_input_names_it_and_skip_gives_nan_rows(xray_pngs, tmp_path):
    paths, _ = xray_pngs
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    X = [paths[0], str(broken), paths[1]]
    with pytest.raises(InputError, match=r"input 1 .*broken\.png"):
        small().fit_transform(X)
    backbone = small(on_error="skip")
    out = backbone.fit_transform(X)
    assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2]]).all()
    assert list(backbone.failures_) == [1] and "broken.png" in backbone.failures_[1]


def test_mixed_sizes_in_a_list_of_arrays_are_rejected():
    X = [np.zeros((28, 28), np.uint8), np.zeros((32, 32), np.uint8)]
    with pytest.raises(InputError, match=r"input 1"):
        small().fit_transform(X)


def test_images_of_any_size_from_files_are_resized(tmp_path):
    paths = []
    for i, size in enumerate([(40, 30), (64, 64), (20, 50)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, size[::-1] + (3,), dtype=np.uint8)).save(path)
        paths.append(path)
    assert small().fit_transform(paths).shape == (3, 1280)


# The scikit-learn estimator checks that apply to a transformer whose input is images, not a
# 2-D numeric matrix. The others (check_transformer_general, check_fit2d_*, check_n_features_in,
# check_estimators_dtypes, check_methods_subset_invariance, ...) feed a random (n, d) float
# matrix as X: for FrozenBackbone that is a feature matrix, not images, and it is rejected on
# purpose with an InputError, so those checks do not apply.
APPLICABLE_CHECKS = [
    "check_no_attributes_set_in_init",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_estimator_cloneable",
    "check_estimator_repr",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_mixin_order",
    "check_valid_tag_types",
    "check_estimator_tags_renamed",
    "check_transformers_unfitted",
    "check_param_validation",
    "check_get_feature_names_out_error",
]


@pytest.mark.parametrize("check_name", APPLICABLE_CHECKS)
def test_scikit_learn_estimator_checks(check_name):
    check = getattr(estimator_checks, check_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check("FrozenBackbone", FrozenBackbone(**SMALL))


def test_tags_say_images_in_float32_out():
    tags = FrozenBackbone().__sklearn_tags__()
    assert tags.input_tags.three_d_array and tags.input_tags.string
    assert not tags.input_tags.two_d_array  # a 2-D matrix is features, not images
    assert tags.transformer_tags.preserves_dtype == ["float32"]
    assert tags.requires_fit and not tags.non_deterministic


# Image-based versions of the scikit-learn checks that the tags above skip (they feed a random
# 2-D matrix, which FrozenBackbone refuses as not images). Without a cache every transform runs
# the network again, with other batches: rows agree to float32 rounding (measured within 3e-5
# for batch sizes 1 to 64, see the batch_size docs); from a cache they are identical.
BATCH_ATOL = 1e-4


@pytest.mark.parametrize("cache", [False, "dir"])
def test_check_methods_subset_and_sample_order_invariance(cache, xray, tmp_path):
    images = xray[0][:16]
    backbone = small(cache=tmp_path / "c" if cache == "dir" else False).fit(images)
    full = backbone.transform(images)
    atol = BATCH_ATOL if cache is False else 0
    for part in (slice(0, 5), slice(5, 16), [3], [15, 0, 7]):
        np.testing.assert_allclose(backbone.transform(images[part]), full[part], atol=atol,
                                   rtol=0, err_msg=f"subset {part}")
    order = np.random.default_rng(0).permutation(len(images))
    np.testing.assert_allclose(backbone.transform(images[order]), full[order], atol=atol, rtol=0)


def test_check_fit_idempotent_and_parameters_not_overwritten(xray):
    images = xray[0]
    backbone = small()
    params = backbone.get_params()
    first = backbone.fit(images[:10]).transform(images[40:46])
    fitted = {k: v for k, v in vars(backbone).items() if k.endswith("_")}
    second = backbone.fit(images[10:30]).transform(images[40:46])
    assert {k: v for k, v in vars(backbone).items() if k.endswith("_")}.keys() == fitted.keys()
    for name in ("fingerprint_", "config_", "n_features_out_", "weights_identity_"):
        assert getattr(backbone, name) == fitted[name], name
    np.testing.assert_allclose(second, first, atol=BATCH_ATOL, rtol=0)
    assert backbone.get_params() == params


def test_check_n_features_out_and_output_dtype(xray):
    images = xray[0][:4]
    with pytest.raises(NotFittedError):
        small().get_feature_names_out()
    backbone = small().fit(images)
    out = backbone.transform(images)
    assert out.shape[1] == backbone.n_features_out_ == len(backbone.get_feature_names_out())
    for X in (images, images.astype(np.uint16) * 257, images.astype(np.float32) / 255,
              images.astype(np.float64) / 255):
        assert backbone.transform(X).dtype == np.float32, X.dtype


def test_a_2d_numeric_matrix_is_rejected_as_not_images():
    with pytest.raises(InputError, match="feature matrix"):
        small().fit(np.random.rand(10, 5))


@pytest.mark.gpu
def test_gpu_bf16_matches_cpu_fp32(xray):
    images, _ = xray
    cpu = small(device="cpu").fit_transform(images[:8])
    gpu = small(device="cuda", precision="bf16").fit_transform(images[:8])
    cos = (cpu * gpu).sum(1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(gpu, axis=1)
    assert cos.min() > 0.98


# ---------------------------------------------------------------------- with the cache


def _shards(cache_dir):
    return sorted(Path(cache_dir).glob("*/shards/*.h5"))


def test_warm_cache_serves_every_later_transform_without_the_network(xray, tmp_path, forbid_network):
    images, labels = xray
    backbone = small(cache=tmp_path / "cache")
    cold = backbone.fit_transform(images)
    assert backbone.transform_stats_["computed"] == 60
    forbid_network()
    np.testing.assert_array_equal(backbone.transform(images), cold)
    twin = clone(backbone).fit(images)
    np.testing.assert_array_equal(twin.transform(images), cold)
    assert twin.transform_stats_ == {**twin.transform_stats_, "computed": 0, "cached": 60}
    pipe = Pipeline([("backbone", clone(backbone)), ("clf", LogisticRegression(max_iter=500))])
    GridSearchCV(pipe, {"clf__C": [0.1, 1.0], "backbone__batch_size": [8, 64]}, cv=3).fit(images, labels)


def test_a_new_process_reads_the_cache(xray, tmp_path):
    images, _ = xray
    cache = tmp_path / "cache"
    cold = small(cache=cache).fit_transform(images)
    np.save(tmp_path / "images.npy", images)
    script = (
        "import sys, numpy as np, featcache.engine.batches as engine\n"
        "def refuse(*a, **k): raise SystemExit('the network ran')\n"
        "engine.run_batches = refuse\n"
        "from featcache import FrozenBackbone\n"
        "X = np.load(sys.argv[1])\n"
        "out = FrozenBackbone(image_size=32, cache=sys.argv[2], progress=False).fit_transform(X)\n"
        "np.save(sys.argv[3], out)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "images.npy"), str(cache),
                    str(tmp_path / "out.npy")], check=True, timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), cold)


def test_joblib_workers_read_the_cache(xray, tmp_path):
    images, labels = xray
    cache = tmp_path / "cache"
    small(cache=cache).fit_transform(images)
    before = _shards(cache)
    pipe = Pipeline([("backbone", small(cache=cache)), ("clf", LogisticRegression(max_iter=500))])
    search = GridSearchCV(pipe, {"clf__C": [0.1, 1.0]}, cv=2, n_jobs=2).fit(images, labels)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert _shards(cache) == before, "a worker computed rows that were cached"


def test_partial_hits_compute_only_the_misses_in_input_order(xray, tmp_path):
    images, _ = xray
    fresh = small().fit_transform(images[:20])
    backbone = small(cache=tmp_path / "cache").fit(images)
    backbone.transform(images[5:12])
    out = backbone.transform(images[:20][::-1])
    assert backbone.transform_stats_["computed"] == 13 and backbone.transform_stats_["cached"] == 7
    np.testing.assert_allclose(out, fresh[::-1], atol=1e-5)


@pytest.mark.parametrize("change", [{"pooling": "max"}, {"image_size": 48}, {"layer": "blocks.5"}])
def test_a_fingerprint_change_never_serves_an_old_row(change, xray, tmp_path):
    images, _ = xray
    cache = tmp_path / "cache"
    first = small(cache=cache).fit(images[:4])
    first.transform(images[:4])
    other = small(cache=cache, **change).fit(images[:4])
    assert other.fingerprint_ != first.fingerprint_
    other.transform(images[:4])
    assert other.transform_stats_["computed"] == 4


def test_moved_files_and_other_run_settings_still_hit_but_edits_do_not(xray_pngs, tmp_path):
    paths, _ = xray_pngs
    cache = tmp_path / "cache"
    small(cache=cache).fit_transform(paths[:5])
    moved = tmp_path / "moved"
    moved.mkdir()
    new_paths = [str(Path(p).rename(moved / f"renamed_{i}.png")) for i, p in enumerate(paths[:5])]
    again = small(cache=cache, batch_size=2, num_workers=1).fit(new_paths)
    again.transform(new_paths)
    assert again.transform_stats_["computed"] == 0
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(new_paths[0])
    again.transform(new_paths)
    assert again.transform_stats_["computed"] == 1


def test_recorded_failures_are_nan_and_retried_only_when_asked(xray_pngs, tmp_path):
    from featcache import FeatureCache

    paths, _ = xray_pngs
    cache = tmp_path / "cache"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    X = [paths[0], str(broken)]
    skipper = small(cache=cache, on_error="skip")
    out = skipper.fit_transform(X)
    assert np.isnan(out[1]).all() and np.isfinite(out[0]).all()
    assert "broken.png" in skipper.failures_[1]
    (info,) = FeatureCache(cache).info()
    assert info["failures"] == 1 and info["rows"] == 1
    skipper.transform(X)
    assert skipper.transform_stats_["computed"] == 0 and np.isnan(skipper.transform(X)[1]).all()
    with pytest.raises(InputError, match=r"broken\.png.*recorded in the cache"):
        small(cache=cache).fit_transform(X)
    shards_before = len(list(cache.glob("*/shards/*.h5")))
    retry = small(cache=cache, on_error="skip", retry_failed=True).fit(X)
    retry.transform(X)
    # decoded again (its new failure is committed in a new shard); computed counts rows only,
    # as in `featcache extract`'s summary
    stats = retry.transform_stats_
    assert (stats["computed"], stats["cached"], stats["failed"]) == (0, 1, 1)
    assert len(list(cache.glob("*/shards/*.h5"))) == shards_before + 1


def test_a_fitted_estimator_reads_a_warm_cache_without_importing_torch(xray, tmp_path):
    images, _ = xray
    backbone = small(cache=tmp_path / "cache")
    expected = backbone.fit_transform(images[:5])
    joblib.dump(backbone, tmp_path / "b.joblib")
    np.save(tmp_path / "x.npy", images[:5])
    script = (
        "import sys, joblib, numpy as np\n"
        "out = joblib.load(sys.argv[1]).transform(np.load(sys.argv[2]))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "np.save(sys.argv[3], out)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "b.joblib"), str(tmp_path / "x.npy"),
                    str(tmp_path / "out.npy")], check=True, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_threads_sharing_one_network_get_their_own_layers_and_build_it_once(xray, monkeypatch):
    import featcache.backbones.loading as loading

    images = xray[0][:16]
    layers = ["blocks.4"] * 4 + [None] * 2
    expected = {layer: small(layer=layer).fit_transform(images) for layer in set(layers)}
    monkeypatch.setattr(loading, "_NETWORKS", OrderedDict())  # the threads load it together
    monkeypatch.setattr(loading, "_LOADED", OrderedDict())
    builds = []
    build = loading.build_network
    monkeypatch.setattr(loading, "build_network",
                        lambda *a, **k: builds.append(a) or build(*a, **k))
    barrier = threading.Barrier(len(layers))
    results, errors = [], []

    def work(layer):
        try:
            for _ in range(3):
                barrier.wait(timeout=300)
                results.append((layer, small(layer=layer).fit_transform(images)))
        except Exception as exc:  # noqa: BLE001 - reported below, with its thread's layer
            errors.append(f"layer={layer}: {type(exc).__name__}: {exc}")
            barrier.abort()

    threads = [threading.Thread(target=work, args=(layer,)) for layer in layers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    assert len(results) == 3 * len(layers)
    for layer, out in results:
        np.testing.assert_allclose(out, expected[layer], atol=1e-5, err_msg=f"layer={layer}")
    assert len(builds) == 1, "two threads built (and folded) the same network"


def test_fit_on_a_warm_cache_never_loads_the_network(xray, tmp_path, monkeypatch):
    images, _ = xray
    first = small(cache=tmp_path / "cache")
    expected = first.fit_transform(images[:6])
    np.save(tmp_path / "x.npy", images[:6])
    code = ("import sys, numpy as np\nfrom featcache import FrozenBackbone\n"
            f"b = FrozenBackbone(image_size=32, cache={str(tmp_path / 'cache')!r})\n"
            f"out = b.fit(np.load({str(tmp_path / 'x.npy')!r})).transform("
            f"np.load({str(tmp_path / 'x.npy')!r}))\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            f"np.save({str(tmp_path / 'out.npy')!r}, out); print(b.fingerprint_)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True)
    assert run.stdout.strip() == first.fingerprint_
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_a_remembered_configuration_that_goes_stale_is_never_used(xray, tmp_path, monkeypatch):
    from featcache.cache import resolved

    images, _ = xray
    cache = tmp_path / "cache"
    first = small(cache=cache).fit(images[:2])
    # another library version: another key, so the network is loaded and the entry is new
    real = resolved.library_versions
    monkeypatch.setattr(resolved, "library_versions", lambda: {**real(), "timm": "0.0.0"})
    assert small(cache=cache).fit(images[:2]).fingerprint_ == first.fingerprint_
    assert len(list((cache / resolved.RESOLVED_DIR).iterdir())) == 2
    monkeypatch.undo()
    # an entry that lies (edited by hand): caught as soon as the network runs for a miss
    for path in (cache / resolved.RESOLVED_DIR).iterdir():
        entry = json.loads(path.read_text())
        for config in entry["configs"].values():
            config["weights_digest"] = "0" * 32
        path.write_text(json.dumps(entry))
    lied = small(cache=cache).fit(images[:2])
    assert lied.fingerprint_ != first.fingerprint_
    with pytest.raises(FeatcacheError, match="does not match the network loaded for it"):
        lied.transform(images[:2])
    assert small(cache=cache).fit(images[:2]).fingerprint_ == first.fingerprint_  # forgotten
