"""FrozenBackbone: a frozen pretrained network as a scikit-learn transformer."""

from __future__ import annotations

import os
import time

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, _fit_context
from sklearn.utils._param_validation import HasMethods, InvalidParameterError
from sklearn.utils.validation import check_is_fitted

from .backbones.weights import may_remember
from .engine.run import resolve_run
from .exceptions import InvalidOptionError
from .inputs import as_items
from .engine.run_options import resolve_run_options
from .options import RUN_OPTIONS, option_constraints, validate_run_options

__all__ = ["FrozenBackbone"]

_UNRECORDED = object()  # weights_identity_ of an estimator pickled before it was recorded


class FrozenBackbone(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Embed images with a frozen pretrained network.

    The network is never trained: :meth:`fit` only resolves and loads the backbone and
    records its configuration fingerprint; :meth:`transform` returns one embedding per
    input. Put a scikit-learn estimator after it in a :class:`~sklearn.pipeline.Pipeline`
    to train a head on the embeddings.

    Parameters
    ----------
    model : str, default="efficientnet_lite0"
        Backbone name: a featcache name (``featcache.list_backbones()``), a torchvision
        classification model (``"resnet50"`` or ``"torchvision:resnet50"``) or a timm model
        (``"timm:convnext_tiny"``).
    weights : str, path or None, default="DEFAULT"
        ``"DEFAULT"`` or a named weights tag of the source library (downloaded by it when
        online), the path of a local checkpoint (loaded with ``torch.load(weights_only=True)``),
        or None for random initialisation (tests only; warns).
    layer : str or None, default=None
        None: the network's final feature map (or its penultimate vector). Otherwise a module
        name, e.g. ``"blocks.4"`` (see :func:`featcache.backbones.layer_names`).
    pooling : {"avg", "max", "gem", "cls", "none"}, default="avg"
        How a feature map or token sequence becomes one vector.
    image_size : int or None, default=None
        Side of the square network input; None uses the backbone's (224 for the default).
    batch_size : int, default=64
        Images per forward pass. Not part of the fingerprint: rows computed at one batch size
        are served at any other. The values agree to float32 rounding, not bit for bit
        (batch sizes 1, 3, 7 and 64 on a CPU in fp32: within 3e-5 absolute).
    device : str, default="auto"
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        ``"auto"`` is fp32 on CPU and bf16 (or fp16) autocast on GPU. Part of the fingerprint.
    cache : "auto", path, FeatureCache, False or None, default="auto"
        Where embeddings are cached (see :class:`featcache.FeatureCache`): ``"auto"`` is
        ``$FEATCACHE_HOME`` or the platform's user cache directory (platformdirs:
        ``~/.cache/featcache`` on Linux, ``~/Library/Caches/featcache`` on macOS,
        ``%LOCALAPPDATA%\\featcache\\featcache\\Cache`` on Windows); False or
        None disables caching. Every input is computed once per configuration fingerprint;
        later transforms, clones, grid-search folds and other processes read the cache.
    num_workers : int or None, default=None
        DataLoader decode workers; None picks 0 on CPU and up to 8 on GPU.
    on_error : {"raise", "skip"}, default="raise"
        ``"raise"``: an undecodable input raises :class:`~featcache.exceptions.InputError`
        naming it. ``"skip"``: its row is NaN (never zero) and the reason is recorded.
    progress : bool or None, default=None
        Progress bar of the images computed (cached ones are not); None shows it on an
        interactive terminal and in a Jupyter kernel (a widget bar when ipywidgets is
        installed, ``pip install featcache[notebook]``, else a text bar).
    window : (center, width) or None, default=None
        Intensity window for 16-bit, float and DICOM images (e.g. ``(40, 400)`` for a CT
        soft-tissue window in Hounsfield units); None uses the DICOM file's own window, else
        each image's min..max. Part of the fingerprint.
    decode_scale : {"reduced", "full"}, default="reduced"
        ``"reduced"``: an image at least 4x ``image_size`` on its shorter side is decoded at a
        reduced scale (a JPEG at a reduced DCT scale, others box-averaged), never under 2x
        ``image_size``, then resized as usual: about half the decoding time of large images,
        rows within cosine 0.9995 of ``"full"`` (0.997 on 8-bit X-ray JPEGs), which decodes every pixel (the rows of
        featcache before this option, in their namespace). Part of the fingerprint.
    decoder : {"pillow", "device"}, default="pillow"
        ``"pillow"``: every input is decoded by Pillow on the CPU. ``"device"``: baseline and
        progressive 8-bit JPEG files (grayscale or colour, no EXIF rotation) are decoded in
        batches on ``device`` by ``torchvision.io.decode_jpeg`` (nvJPEG on a GPU) at full
        size and resized there; every other input, and a JPEG the device fails to decode, by
        Pillow in the same run. Its own namespace: part of the fingerprint (rows differ
        slightly from Pillow's, see the FAQ). A device without a JPEG decoder raises
        :class:`~featcache.exceptions.DecoderUnavailableError`.
    retry_failed : bool, default=False
        Inputs whose failure is recorded in the cache (``on_error="skip"``) are not decoded
        again unless this is True; with ``on_error="raise"`` a recorded failure raises.
    verify_inputs : {"stat", "hash"}, default="stat"
        How an input file's content key is obtained. ``"stat"``: a file whose identity (size,
        mtime, ctime, inode) is unchanged since the cache remembered its key is not read (a
        file younger than a few seconds is always read; see :mod:`featcache.cache.identity`).
        ``"hash"``: every file is read and hashed, for files rewritten through a memory map,
        whose timestamps may not move.

    Attributes
    ----------
    n_features_out_ : int
        Embedding dimension.
    fingerprint_ : str
        Hash of everything that changes the numbers (see :func:`featcache.backbones.fingerprint`).
    config_ : dict
        The configuration behind ``fingerprint_``.
    weights_identity_ : tuple or None
        Identity of the weights file at fit (resolved path, size, mtime, inode, device,
        ctime; see :func:`featcache.backbones.weights.file_identity`), None for named or random
        weights. Every ``transform`` compares the file with it, so a checkpoint rewritten
        since fit is refused before any cached row is served. An identity taken within a few
        seconds of the file's last change (see :mod:`featcache.cache.identity`) is not
        trusted: ``transform`` loads the weights and compares their digest, until the file
        is old enough for its identity to be trusted.
    failures_ : dict
        Position -> reason of the inputs skipped by the last ``transform`` (``on_error="skip"``).
    transform_stats_ : dict
        What the last ``transform`` did: ``computed`` (rows the network ran for), ``cached``
        (rows read from the cache), ``failed``, and ``seconds``.
    feature_names_in_ : ndarray of str
        Set when X is a one-column DataFrame of paths.

    Examples
    --------
    >>> from sklearn.pipeline import Pipeline
    >>> from sklearn.linear_model import LogisticRegression
    >>> pipe = Pipeline([("backbone", FrozenBackbone()), ("clf", LogisticRegression(max_iter=1000))])
    >>> pipe.fit(train_paths, y_train).predict_proba(val_paths)  # doctest: +SKIP
    """

    def __init__(self, model="efficientnet_lite0", *, weights="DEFAULT", layer=None, pooling="avg",
                 image_size=None, batch_size=64, device="auto", precision="auto", cache="auto",
                 num_workers=None, on_error="raise", progress=None, retry_failed=False,
                 window=None, decode_scale="reduced", decoder="pillow", verify_inputs="stat"):
        self.model = model
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.cache = cache
        self.num_workers = num_workers
        self.on_error = on_error
        self.progress = progress
        self.retry_failed = retry_failed
        self.window = window
        self.decode_scale = decode_scale
        self.decoder = decoder
        self.verify_inputs = verify_inputs

    # The options' constraints come from featcache.options (OPTIONS), the one validation.
    _parameter_constraints: dict = {
        **option_constraints(__init__),
        "cache": [str, os.PathLike, "boolean", None, HasMethods(["namespace", "verify"])],
    }

    # ------------------------------------------------------------------ fitting

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Resolve and load the backbone; nothing is trained.

        Parameters
        ----------
        X : images
            Paths, an ``(n, H, W[, C])`` array, PIL images, an ``(n, C, H, W)`` tensor, a
            map-style torch ``Dataset`` of images or ``(image, label)`` pairs, or rows as
            dicts with an ``"image"`` field (see :func:`featcache.inputs.as_items`);
            checked for form only.
        y : ignored

        Returns
        -------
        self
        """
        self._check_options()
        as_items(X)
        self._check_input_columns(X, reset=True)
        run = self._run()
        ((self.config_, self.fingerprint_),) = run.configs.values()
        self.weights_identity_ = run.weights_identity  # taken before anything read the file
        self._weights_trusted = run.remembered
        self.n_features_out_ = self.config_["dim"]
        return self

    def _check_options(self):
        """What scikit-learn's constraints cannot say (a window's numbers, a device's form),
        checked by the options' one validation, raised in scikit-learn's form."""
        try:
            validate_run_options(self.get_params(deep=False), "FrozenBackbone")
        except InvalidOptionError as exc:  # scikit-learn's convention for estimators
            raise InvalidParameterError(str(exc)) from exc

    def _run(self, fitted=None):
        """The run (:func:`featcache.engine.run.resolve_run`): no network when the cache knows it.

        A cache directory remembers resolved configurations, so a fit on a warm cache (a new
        process, a joblib worker) never imports torch. With ``fitted`` (a transform) the
        fitted configuration is used as it is, and ``load()`` checks the network still gives
        it (weights files can change on disk; parameters can be set without refitting).
        """
        options = resolve_run_options(
            "FrozenBackbone", **{name: getattr(self, name) for name in RUN_OPTIONS
                                 if name not in ("commit_rows", "commit_seconds")})
        return resolve_run(model=self.model, weights=self.weights, layers=(self.layer,),
                           pooling=self.pooling, image_size=self.image_size, cache=self.cache,
                           options=options, fitted=fitted)

    def _check_weights_unchanged(self, run):
        """Refuse to serve rows when the weights file changed since fit.

        A stat compares the file with ``weights_identity_`` (no torch on this warm path); only
        when they differ (an edit, a copy, another path set without refitting) is the backbone
        loaded and its fingerprint compared, which raises if the weights really changed.
        """
        fitted = self.__dict__.get("weights_identity_", _UNRECORDED)
        current = run.weights_identity
        if fitted is _UNRECORDED:  # pickled by an older featcache: verify a file the long way
            changed = current is not None
        else:  # an identity taken while the file was young may hide a same-tick rewrite
            trusted = self.__dict__.get("_weights_trusted", False)
            changed = current != fitted or (current is not None and not trusted)
        if changed:
            run.load()  # raises unless the file holds the fitted weights
            if fitted is not _UNRECORDED and may_remember(current):
                # verified after ``current`` was taken, and settled: a later rewrite moves it
                self.weights_identity_, self._weights_trusted = current, True

    def _check_input_columns(self, X, *, reset):
        columns = getattr(X, "columns", None)
        if columns is not None:
            names = np.asarray([str(c) for c in columns], dtype=object)
            if reset:
                self.feature_names_in_ = names
                self.n_features_in_ = len(names)
        elif reset:
            for attr in ("feature_names_in_", "n_features_in_"):
                self.__dict__.pop(attr, None)

    @property
    def _n_features_out(self):
        return self.n_features_out_

    # ------------------------------------------------------------------ transforming

    def transform(self, X):
        """Embed images.

        Parameters
        ----------
        X : images
            As in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_samples, n_features_out_), float32
            Rows in input order; with ``on_error="skip"`` a failed input's row is NaN.
        """
        check_is_fitted(self, "fingerprint_")
        items = as_items(X)
        return self._embed(items)

    def fit_transform(self, X, y=None, **fit_params):
        """Fit, then embed X (the network runs once)."""
        return self.fit(X, y).transform(X)

    def _embed(self, items):
        """Rows of ``items``: cached ones read, misses computed (and committed) first."""
        start = time.perf_counter()
        layer = self.config_["layer"]
        run = self._run(fitted={layer: (self.config_, self.fingerprint_)})
        self._check_weights_unchanged(run)
        done = run.embed(items, read=layer, start=start)
        self.failures_ = done.failures
        self.transform_stats_ = {"computed": done.computed, "cached": done.cached,
                                 "failed": done.failed, "seconds": done.seconds}
        return done.features

    # ------------------------------------------------------------------ tags
    # The torch network is never an attribute (it lives in a per-process memo in
    # featcache.backbones), so pickling and joblib.dump carry parameters and fitted values only.

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # X is images: paths (strings), stacks (n, H, W) / (n, H, W, C), never a 2-D matrix.
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        # The output is float32 whatever the input: float32 images are the one dtype kept.
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.requires_fit = True
        tags.non_deterministic = False
        return tags
