"""The user-facing multinomial VAE: fit / transform / score / sample / save / load.

``MultinomialVAE`` owns data handling and training; the maths lives in
:class:`mvae.counts.MultinomialVAEModule`. scikit-learn conventions: ``__init__`` only stores its
arguments, ``fit`` checks them, learned state ends in ``_``.

Results are reported in an ordered orthogonal form, as PCA users expect: W is identified only up to a
rotation W ↦ WR, so with the SVD W̃ = U S Vᵀ the loadings are U S (columns ordered by variance
explained) and the embeddings are E[z | x] V. Rotation-invariant quantities (W̃W̃ᵀ, the covariance,
the subspace) do not depend on this choice.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .errors import InputError, ModelFileError
from .params import constructor_params, is_int, require

__all__ = ["MultinomialVAE"]

SCHEMA_VERSION = 1
_FORMAT = "mvae.MultinomialVAE"
_BASES = ("helmert", "balanced", "tree")


def _anndata_type():
    # an AnnData can only exist if anndata was imported; importing it just to ask costs a fit
    # of a plain array a third of a CPU-second
    anndata = sys.modules.get("anndata")
    return None if anndata is None else anndata.AnnData


def _is_anndata(X) -> bool:
    cls = _anndata_type()
    return cls is not None and isinstance(X, cls)


class MultinomialVAE:
    """Multinomial variational autoencoder with an ILR basis, for count tables.

    Parameters
    ----------
    n_latent : int
        Latent dimensions k (1 ≤ k < number of features).
    encoder_depth : int
        L: the encoder has L − 1 nonlinear hidden layers before its output heads; L = 1 is a
        linear encoder (a width-``n_hidden`` linear bottleneck and linear heads).
    n_hidden : int
        Width of the encoder's hidden layers.
    pseudocount : float
        c in the encoder input log(x + c). The decoder never sees it.
    objective : {"marginal", "sampled"}
        ``marginal`` integrates z out analytically (learns σ and the spectrum of W);
        ``sampled`` is catvae's form, kept for comparison.
    posterior_rank : int
        r, the width of the ``marginal`` posterior's mean factor: q(ℓ | x) has mean
        b̃ + R g(u) + a ⊙ clr(log(x + c)) with a (D, r) factor R of its own and variance
        exp(s(u) + c_d + β_d log(x_d/c + 1)), s(u) one scalar per sample (docs/model.md). The
        expected log-likelihood is estimated by Monte Carlo for tables kept dense, and with
        draws at the non-zero counts and the Jensen bound at the zeros for tables kept sparse
        (density below 5%): the choice follows the data, not a setting.
    basis : {"helmert", "balanced", "tree"}
        ILR basis used to report loadings and covariances in balance coordinates. Training does not
        depend on it (it runs in clr coordinates).
    tree : str, path or skbio.TreeNode, optional
        Newick tree over the features, required for ``basis="tree"``.
    activation, dropout
        Encoder nonlinearity and the dropout rate of its hidden layers (default 0.3: the encoder
        overfits small tables; chosen by held-out −ELBO on the shipped tables,
        ``benchmarks/results/selection/`` "Encoder settings").
    n_mc_samples : int
        Reparameterised draws per sample and step.
    batch_size, max_epochs, learning_rate, early_stopping, patience, validation_fraction,
    kl_warmup_epochs
        Optimisation settings. Early stopping watches the validation samples' negative ELBO
        under refined posteriors (docs/model.md, "Refined posteriors") and ends the fit once
        ``patience`` epochs pass without an improvement of more than 0.1 %, restoring the best
        epoch's weights. ``max_epochs`` and ``patience`` default to ``None``: chosen so that
        small and large tables get a comparable number of optimiser steps (see
        ``_epoch_budget``).
    init : {"pca", "random"}
        Start the decoder at probabilistic PCA of clr(x + c) on (up to 2·10⁷ entries of) the
        training samples, or at small random loadings. PCA is biased on sparse tables but puts the
        spectrum near the right scale, which the optimiser otherwise reaches slowly; measured on
        the deep simulation of tests/test_recovery.py it halved the covariance error at the same
        early-stopping point (relative Frobenius 0.31 → 0.11).
    random_state : int or None
        Seed for initialisation, the validation split, shuffling and Monte Carlo noise. Same seed and
        thread count give bitwise-equal results on the CPU.
    threads : int or None
        torch threads used during fit and inference (default: half the usable cores, at most 8).
    device : {"cpu", "cuda", "auto"}
    progress : bool or None
        Show a progress bar during fit (epochs, training and validation loss; on standard error,
        or as a widget in Jupyter), from two seconds into the fit. ``None`` (default): where a
        person would see it, i.e. when standard error is a terminal or in a Jupyter kernel;
        ``False`` silences it.

    Attributes
    ----------
    module_ : MultinomialVAEModule
    feature_ids_ : list of str
        Features the model was fitted on (all-zero features dropped), in order.
    history_ : pandas.DataFrame
        Per-epoch train and validation loss (mean negative ELBO per sample, nats).
    explained_variance_ : ndarray, shape (k,)
        Variance of the clr logits along each ordered axis (the squared singular values of W̃).
    noise_variance_ : float
        σ².
    polish_ : dict or None
        What the end-of-fit polish did (docs/model.md, "The polish"): ``scores``, the validation
        −ELBO of the trained decoder and of each EM iterate; ``sigma2``, their σ²; ``kept``, the
        iterate kept (0: the trained decoder); ``samples``, the training samples it used. None
        without a validation split (or with the ``sampled`` objective).
    """

    def __init__(self, n_latent: int = 10, *, encoder_depth: int = 2, n_hidden: int = 128,
                 pseudocount: float = 1.0, objective: str = "marginal",
                 posterior_rank: int = 32, basis: str = "helmert",
                 tree=None, activation: str = "gelu", dropout: float = 0.3, n_mc_samples: int = 1,
                 batch_size: int = 128, max_epochs: int | None = None,
                 learning_rate: float = 3e-3,
                 early_stopping: bool = True, patience: int | None = None,
                 validation_fraction: float = 0.1, kl_warmup_epochs: int = 0,
                 init: str = "pca", random_state: int | None = None,
                 threads: int | None = None, device: str = "cpu", progress: bool | None = None):
        self.n_latent = n_latent
        self.encoder_depth = encoder_depth
        self.n_hidden = n_hidden
        self.pseudocount = pseudocount
        self.objective = objective
        self.posterior_rank = posterior_rank
        self.basis = basis
        self.tree = tree
        self.activation = activation
        self.dropout = dropout
        self.n_mc_samples = n_mc_samples
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.learning_rate = learning_rate
        self.early_stopping = early_stopping
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.kl_warmup_epochs = kl_warmup_epochs
        self.init = init
        self.random_state = random_state
        self.threads = threads
        self.device = device
        self.progress = progress

    # ------------------------------------------------------------------ parameters
    def get_params(self) -> dict:
        """The constructor arguments (JSON-serialisable except a TreeNode ``tree``)."""
        return constructor_params(self)

    def _check_params(self, n_features: int) -> None:
        from .io.validation import MAX_HIDDEN, check_seed, check_threads

        def need(cond, name, allowed):
            require(cond, name, getattr(self, name), allowed)

        need(is_int(self.n_latent) and 1 <= self.n_latent < n_features, "n_latent",
             f"need an integer between 1 and {n_features - 1} (number of features after "
             f"dropping all-zero ones, minus 1)")
        need(is_int(self.encoder_depth) and self.encoder_depth >= 1, "encoder_depth",
             "need an integer >= 1")
        need(is_int(self.n_hidden) and self.n_hidden >= 1, "n_hidden", "need an integer >= 1")
        need(isinstance(self.pseudocount, (int, float)) and math.isfinite(self.pseudocount)
             and self.pseudocount > 0, "pseudocount", "need a finite number > 0")
        need(self.objective in ("marginal", "sampled"), "objective",
             "choose 'marginal' or 'sampled'")
        need(is_int(self.posterior_rank) and self.posterior_rank >= 1, "posterior_rank",
             "need an integer >= 1")
        need(self.basis in _BASES, "basis", f"choose one of {_BASES}")
        need(self.basis != "tree" or self.tree is not None, "tree",
             "basis='tree' needs a Newick tree (tree=...)")
        need(0 <= self.dropout < 1, "dropout", "need 0 <= dropout < 1")
        need(is_int(self.n_mc_samples) and self.n_mc_samples >= 1, "n_mc_samples",
             "need an integer >= 1")
        need(is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "need an integer >= 1")
        need(self.max_epochs is None or (is_int(self.max_epochs) and self.max_epochs >= 1),
             "max_epochs", "need None (automatic) or an integer >= 1")
        need(self.learning_rate > 0, "learning_rate", "need a number > 0")
        need(self.patience is None or (is_int(self.patience) and self.patience >= 1), "patience",
             "need None (automatic) or an integer >= 1")
        need(0 <= self.validation_fraction < 1, "validation_fraction", "need 0 <= value < 1")
        need(is_int(self.kl_warmup_epochs) and self.kl_warmup_epochs >= 0, "kl_warmup_epochs",
             "need an integer >= 0")
        need(self.init in ("pca", "random"), "init", "choose 'pca' or 'random'")
        check_threads(self.threads)
        check_seed(self.random_state)
        need(self.n_hidden <= MAX_HIDDEN, "n_hidden", f"need an integer <= {MAX_HIDDEN}")
        need(str(self.device) in ("cpu", "cuda", "auto") or str(self.device).startswith("cuda:"),
             "device", "choose 'cpu', 'cuda' or 'auto'")

    # ------------------------------------------------------------------ data handling
    @staticmethod
    def _extract(X, layer):
        """(matrix, sample_ids or None, feature_ids or None) from AnnData, DataFrame or array."""
        if _is_anndata(X):
            if layer is None:
                M = X.X
            elif layer in X.layers:
                M = X.layers[layer]
            else:
                raise InputError(f"layer={layer!r} is not in this AnnData; available layers: "
                                 f"{sorted(X.layers.keys()) or 'none'} (or layer=None for X)")
            if M is None:
                raise InputError("this AnnData has no X; pass layer=... to pick the counts")
            return M, [str(s) for s in X.obs_names], [str(f) for f in X.var_names]
        if layer is not None:
            raise InputError("layer= is only meaningful for AnnData input")
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover
            pd = None
        if pd is not None and isinstance(X, pd.DataFrame):
            return X.to_numpy(), [str(s) for s in X.index], [str(f) for f in X.columns]
        return X, None, None

    def _aligned(self, X, layer=None, *, warn: bool = True):
        """Counts of new data as a CSR matrix over ``feature_ids_`` (validated)."""
        import scipy.sparse as sp

        from .io.validation import check_counts

        self._check_fitted()
        M, sample_ids, feature_ids = self._extract(X, layer)
        M = check_counts(M, sample_ids=sample_ids, feature_ids=feature_ids)
        if feature_ids is None:
            if M.shape[1] == len(self.feature_ids_):
                return M, sample_ids
            if M.shape[1] == len(self.input_feature_ids_):
                return M[:, self.kept_feature_index_], sample_ids
            raise InputError(
                f"X has {M.shape[1]} columns but the model was fitted on "
                f"{len(self.input_feature_ids_)} features ({len(self.feature_ids_)} kept); pass "
                "an AnnData or DataFrame with feature ids to align by name")
        position = {f: i for i, f in enumerate(feature_ids)}
        # features seen at fit but dropped as all-zero are expected, not "unknown"
        seen = set(self.input_feature_ids_)
        unknown = [f for f in feature_ids if f not in self._feature_index and f not in seen]
        missing = [f for f in self.feature_ids_ if f not in position]
        if len(missing) == len(self.feature_ids_):
            raise InputError("none of the table's features are features of the model; is this the "
                             "right table (same feature ids, e.g. ASV hashes or gene names)?")
        if warn and unknown:
            warnings.warn(f"{len(unknown)} features unknown to the model were dropped "
                          f"(e.g. {unknown[:5]})", stacklevel=3)
        if warn and missing:
            warnings.warn(f"{len(missing)} of the model's features are missing from the table and "
                          f"were filled with zeros (e.g. {missing[:5]})", stacklevel=3)
        # A 0/1 selection matrix maps the table's columns onto the model's (absent ones stay 0).
        src = np.array([position[f] for f in self.feature_ids_ if f in position], dtype=np.int64)
        dst = np.array([j for j, f in enumerate(self.feature_ids_) if f in position], dtype=np.int64)
        select = sp.csr_matrix((np.ones(len(src)), (src, dst)),
                               shape=(M.shape[1], len(self.feature_ids_)))
        return (M @ select).tocsr(), sample_ids

    # ------------------------------------------------------------------ fit
    def fit(self, X, *, layer: str | None = None, checkpoint=None, checkpoint_every: int = 0,
            resume: bool = False) -> "MultinomialVAE":
        """Fit the model to a count table, in memory or streamed from disk.

        Parameters
        ----------
        X : AnnData, numpy.ndarray, scipy.sparse matrix, pandas.DataFrame or StreamingCounts
            Raw counts, samples as rows, shape (n, D). For AnnData, ``layer`` picks the counts
            (default X); the embeddings are written to ``obsm["X_mvae"]``, the anomaly scores
            (:meth:`score_samples`) to ``obs["mvae_negative_elbo"]``, clr loadings to
            ``varm["mvae_loadings"]`` and the settings to ``uns["mvae"]`` (rows of dropped
            all-zero samples/features are NaN). Embeddings and scores come from refined posteriors
            (:meth:`transform`). A :class:`mvae.io.streaming.StreamingCounts` is
            read chunk by chunk and never held in memory whole (see :meth:`fit_stream`).
        checkpoint : path, optional
            File for crash-safe checkpoints (written atomically; read back with
            ``weights_only=True``). Written every ``checkpoint_every`` epochs and on SIGTERM/SIGINT,
            after which :class:`~mvae.errors.TrainingInterrupted` is raised.
        resume : bool
            Continue from ``checkpoint`` if it exists. The checkpoint records a sha256 of the data
            and the settings and is refused if either changed. With the same thread count the
            result is bitwise equal to an uninterrupted fit.

        Returns
        -------
        self

        Notes
        -----
        One pass over the table finds the all-zero samples and features (dropped, with a
        warning), the depths and the largest count; a seeded split sets aside
        ``validation_fraction`` of the samples; one pass over the training samples gives the
        encoder's input conditioning and the decoder's starting bias; then the module is
        initialised and trained. Under ``torch.distributed`` (``torchrun ... mvae fit
        --distributed``) each rank reads only its own contiguous block of samples in both passes
        and in training, and the sums are added up over the ranks.
        """
        from .io import is_streamed
        from .io.sources import input_statistics, scan
        from .io.validation import kept_after_dropping_empty
        from .training.distributed import current
        from .training.loop import resolve_device, torch_threads

        _check_fit_options(self, checkpoint, checkpoint_every, resume)
        source = self._source(X, layer)
        device = resolve_device(self.device)
        info = current()  # None unless distributed with more than one rank
        whole = scan(source, info)
        rows, feats, dropped_s, dropped_f = kept_after_dropping_empty(
            whole.sample_nnz, whole.feature_nnz, source.sample_ids, source.feature_ids,
            stacklevel=3)
        data = source.select(rows, feats)
        self._check_params(data.n_features)
        depths = whole.depths[rows]
        _check_depths(depths, data.sample_ids, streamed=is_streamed(source),
                      name=getattr(source, "path", "the table"))
        self.seed_ = (int(self.random_state) if self.random_state is not None
                      else int(np.random.default_rng().integers(2**31 - 1)))
        self._set_features(data.feature_ids, source.feature_ids, feats,
                           _dropped_report(dropped_s, dropped_f))
        rng = np.random.default_rng(self.seed_)
        n = len(data)
        n_valid = int(round(self.validation_fraction * n)) if n >= 10 else 0
        perm = rng.permutation(n)
        valid_idx, train_idx = np.sort(perm[:n_valid]), np.sort(perm[n_valid:])
        self.validation_samples_ = [data.sample_ids[i] for i in valid_idx]
        train = data.subset(train_idx)
        valid = data.subset(valid_idx) if n_valid else None
        with torch_threads(self.threads):
            stats = input_statistics(train, float(self.pseudocount), info)
            local_train, local_valid = train, valid
            if info is not None:  # this rank's own rows from here on
                if len(train) < info.world:
                    raise InputError(f"{len(train)} training samples cannot be shared among "
                                     f"{info.world} processes")
                local_train = train.shard(info.rank, info.world)
                if valid is not None:
                    local_valid = (valid.shard(info.rank, info.world, equal=False)
                                   if len(valid) >= info.world
                                   else (valid if info.rank == 0 else None))
            self._train(local_train.on(device),
                        None if local_valid is None else local_valid.on(device), stats=stats,
                        pca_rows=lambda idx: train.subset(idx).to_csr(),
                        n_pca_source=len(train), sharded=info is not None,
                        # a checkpoint's record of the data: a hash of every count, so only then
                        fingerprint=(self._fingerprint_parts(data.fingerprint_parts())
                                     if checkpoint is not None else ""), rng=rng,
                        device=device, train_depths=depths[train_idx], checkpoint=checkpoint,
                        checkpoint_every=checkpoint_every, resume=resume)
        if is_streamed(source):
            self.stream_rows_ = rows  # the source's rows that were fitted (for writing results)
        elif _is_anndata(X):
            self._write_anndata(X, data.to_csr(), rows, feats)
        return self

    def fit_stream(self, path, *, layer: str | None = None, max_bytes: int = 256 * 2**20,
                   checkpoint=None, checkpoint_every: int = 0,
                   resume: bool = False) -> "MultinomialVAE":
        """Fit to an HDF5 ``.biom`` or ``.h5ad`` table without loading it into memory:
        :meth:`fit` of ``StreamingCounts(path, layer=layer, max_bytes=max_bytes)``.

        Rows are read in chunks of about ``max_bytes`` (see
        :class:`mvae.io.streaming.StreamingCounts`), shuffled chunk by chunk each epoch. Memory
        is bounded by the chunk size plus O(n + D) bookkeeping. Results are the same kind as an
        in-memory fit's but not bitwise equal to it (the shuffle differs).
        """
        from .io.streaming import StreamingCounts

        with StreamingCounts(path, layer=layer, max_bytes=max_bytes) as source:
            return self.fit(source, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                            resume=resume)

    def _source(self, X, layer):
        """The table as a :class:`mvae.io.sources.CountSource`: a StreamingCounts as given, any
        other table validated and held in memory."""
        from .io import is_streamed
        from .io.sources import InMemoryCounts
        from .io.validation import check_counts

        if is_streamed(X):
            if layer is not None:
                raise InputError("layer= is chosen when the StreamingCounts is made "
                                 "(StreamingCounts(path, layer=...)), not in fit")
            return X
        M, sample_ids, feature_ids = self._extract(X, layer)
        M = check_counts(M, sample_ids=sample_ids, feature_ids=feature_ids)
        n, D = M.shape
        return InMemoryCounts(M, sample_ids or [f"sample{i}" for i in range(n)],
                              feature_ids or [f"feature{j}" for j in range(D)])

    def _set_features(self, feature_ids, input_feature_ids, kept_feature_index, report) -> None:
        self.basis_ = self._make_basis(list(feature_ids))
        self.feature_ids_ = list(feature_ids)
        self._feature_index = {f: i for i, f in enumerate(self.feature_ids_)}
        self.input_feature_ids_ = list(input_feature_ids)
        self.kept_feature_index_ = np.asarray(kept_feature_index)
        self.filtered_ = report
        self.n_features_in_ = len(self.input_feature_ids_)

    def _train(self, train_data, valid_data, *, stats, pca_rows, fingerprint, rng, device,
               train_depths, checkpoint, checkpoint_every, resume, n_pca_source=None,
               sharded: bool = False) -> None:
        """Build the module, initialise it from the training data and run the training loop."""
        import torch


        from .counts import MultinomialVAEModule, MVAEConfig
        from .training.loop import TrainConfig, progress_visible, train_module
        from .training.selection import RefinedValidation

        D = len(self.feature_ids_)
        config = MVAEConfig(n_features=D, n_latent=int(self.n_latent), n_hidden=int(self.n_hidden),
                            encoder_depth=int(self.encoder_depth),
                            pseudocount=float(self.pseudocount), objective=self.objective,
                            activation=self.activation, dropout=float(self.dropout),
                            n_mc_samples=int(self.n_mc_samples),
                            posterior_rank=int(self.posterior_rank))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed_)
            module = MultinomialVAEModule(config)
            pooled, centre, scale = stats
            module.initialise_from_data(torch.as_tensor(pooled, dtype=torch.float32),
                                        torch.as_tensor(centre, dtype=torch.float32), scale)
            n_train = len(train_data) if n_pca_source is None else int(n_pca_source)
            if self.init == "pca":
                _pca_initialise(module, n_train, pca_rows, rng)
            module.to(device)  # distributed: DDP in train_module gives every rank rank 0's weights
            max_epochs, patience = _epoch_budget(n_train, int(self.batch_size),
                                                 self.max_epochs, self.patience)
            tconf = TrainConfig(max_epochs=max_epochs, batch_size=int(self.batch_size),
                                learning_rate=float(self.learning_rate),
                                early_stopping=bool(self.early_stopping), patience=patience,
                                min_delta=STOP_TOLERANCE,
                                kl_warmup_epochs=int(self.kl_warmup_epochs),
                                progress=(progress_visible() if self.progress is None
                                          else bool(self.progress)), seed=self.seed_)
            # early stopping watches the decoder: validation posteriors refined across epochs
            score = (RefinedValidation(valid_data, seed=self.seed_ + 2)
                     if valid_data is not None and len(valid_data)
                     and config.objective == "marginal" else None)
            history = train_module(module, train_data, valid_data, tconf,
                                   checkpoint_path=checkpoint, checkpoint_every=checkpoint_every,
                                   fingerprint=fingerprint, resume=resume, sharded=sharded,
                                   validation_score=score)
            # the decoder's variances from refined posteriors (variational EM), judged by the
            # validation score; None where there is no validation split to judge it
            self.polish_ = (_polish(module, pca_rows, n_train, valid_data, score, sharded,
                                    self.seed_ + 7)
                            if config.objective == "marginal" else None)
        self.module_ = module.cpu().eval()
        self.history_ = history.to_frame()
        self.best_epoch_ = history.best_epoch
        self.train_depths_ = np.asarray(train_depths, dtype=np.float64)
        self._set_ordered_form()
        collapsed = np.flatnonzero(self.explained_variance_ < COLLAPSE_RATIO * self.noise_variance_)
        self.collapsed_dims_ = collapsed
        if len(collapsed):
            warnings.warn(
                f"{len(collapsed)} of {self.n_latent} latent dimensions collapsed (axes "
                f"{[int(i) + 1 for i in collapsed]} explain less than {COLLAPSE_RATIO:g} x the "
                f"noise variance); the table supports fewer dimensions: consider "
                f"n_latent={max(1, self.n_latent - len(collapsed))}", CollapsedDimensionsWarning,
                stacklevel=3)

    def _fingerprint_parts(self, parts) -> str:
        import hashlib

        h = hashlib.sha256()
        for part in parts:
            h.update(part)
        params = {k: v for k, v in self.get_params().items()
                  if k not in ("progress", "threads", "device")}
        params["tree"] = None if params["tree"] is None else str(params["tree"])
        params["random_state"] = self.seed_
        h.update(json.dumps(params, sort_keys=True, default=str).encode())
        return h.hexdigest()

    def _make_basis(self, feature_ids):
        D = len(feature_ids)
        if self.basis == "helmert":
            from .maths.compositions import HelmertBasis

            return HelmertBasis(D, feature_ids=feature_ids)
        from .maths.trees import TreeBasis

        if self.basis == "balanced":
            return TreeBasis.balanced(D, feature_ids=feature_ids)
        return TreeBasis.from_tree(self.tree, feature_ids)

    def _decoder(self) -> tuple[np.ndarray, np.ndarray]:
        """W̃ (D, k) and b̃ (D,) in float64, centred in float64 so they sum to zero exactly."""
        W = self.module_.loadings_raw.detach().double().numpy()
        b = self.module_.bias_raw.detach().double().numpy()
        return W - W.mean(axis=0), b - b.mean()

    def _set_ordered_form(self) -> None:
        """SVD of W̃: loadings U S ordered by variance, rotation V for the embeddings."""
        W, _ = self._decoder()  # (D, k)
        U, S, Vt = np.linalg.svd(W, full_matrices=False)
        # Deterministic signs: the largest-magnitude entry of each loading column is positive.
        signs = np.sign(U[np.abs(U).argmax(axis=0), np.arange(U.shape[1])])
        signs[signs == 0] = 1.0
        self.rotation_ = Vt.T * signs  # (k, k): z -> z @ rotation_
        self.components_ = U * S * signs  # (D, k) clr loadings, ordered
        self.explained_variance_ = S**2
        self.noise_variance_ = self.module_.noise_variance.item()
        total = self.explained_variance_.sum() + (W.shape[0] - 1) * self.noise_variance_
        self.explained_variance_ratio_ = self.explained_variance_ / total

    def _write_anndata(self, adata, counts, kept_samples, kept_features) -> None:
        emb = np.full((adata.n_obs, self.n_latent), np.nan)
        scores = np.full(adata.n_obs, np.nan)
        emb[kept_samples], scores[kept_samples] = self._infer(
            self._batches(counts, copies=self._copies(True, True, 16)), embed=True, score=True,
            refine=True)
        adata.obsm["X_mvae"] = emb
        adata.obs["mvae_negative_elbo"] = scores
        load = np.full((adata.n_vars, self.n_latent), np.nan)
        load[kept_features] = self.components_
        adata.varm["mvae_loadings"] = load
        params = {k: v for k, v in self.get_params().items() if k != "tree"}
        params["tree"] = None if self.tree is None else str(self.tree)[:1000]
        adata.uns["mvae"] = {
            "params": {k: ("None" if v is None else v) for k, v in params.items()},
            "seed": self.seed_,
            "noise_variance": self.noise_variance_,
            "explained_variance": self.explained_variance_,
            "explained_variance_ratio": self.explained_variance_ratio_,
        }

    # ------------------------------------------------------------------ inference
    def _check_fitted(self) -> None:
        if not hasattr(self, "module_"):
            raise RuntimeError("this MultinomialVAE is not fitted yet; call fit(X) or load(path)")

    def _batches(self, M, copies: int = 1):
        """Row chunks of M sized so that ``copies`` dense (rows, D) tensors stay near 64 MB."""
        from .training.batches import CountData

        rows = int(np.clip(INFERENCE_ENTRIES // (copies * M.shape[1]), 1, 1024))
        return CountData(M, "cpu").chunks(rows)

    def _chunks(self, X, layer, copies: int):
        """Row chunks of an in-memory table (aligned to the model's features) or of a
        StreamingCounts with the model's features, sized as in :meth:`_batches`."""
        from .io import is_streamed

        if is_streamed(X):
            self._check_stream_features(X)
            rows = int(np.clip(INFERENCE_ENTRIES // (copies * X.n_features), 1, 1024))
            return X.chunks(rows)
        M, _ = self._aligned(X, layer)
        return self._batches(M, copies=copies)

    def _infer(self, batches, *, embed: bool, score: bool, refine: bool,
               n_samples: int = 16) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Embeddings (n, k) in the ordered form and/or −ELBO scores (n,), chunk by chunk.

        With ``refine`` (``marginal`` objective) each chunk's posteriors are refined from the
        encoder's output with the decoder frozen (:func:`mvae.training.refine.refine_posterior`)
        and both outputs come from the refined posteriors. The draws of the refinement and of the
        score are fixed by the model's seed and restart for every chunk (shared by its samples),
        so a sample gets the same embedding and score whatever table or chunk it is in.
        """
        import torch

        from .training.refine import dense_loss_terms, refine_posterior
        from .training.loop import torch_threads

        refine = bool(refine) and self.module_.config.objective == "marginal"
        score_gen = torch.Generator().manual_seed(self.seed_ + 3)
        embeddings, scores = [], []
        with torch_threads(self.threads):
            with torch.no_grad():
                prior = self.module_.prior()
            for batch in batches:
                if score or refine:  # Monte Carlo at every feature: dense chunks
                    batch = _dense_batch(batch)
                post = (refine_posterior(self.module_, batch,
                                         generator=torch.Generator().manual_seed(self.seed_ + 5))
                        if refine else None)
                with torch.no_grad():
                    if embed:
                        z = (self.module_.latent_mean(batch) if post is None
                             else self.module_.latent_from_logits(post.mean))
                        embeddings.append(z.double().numpy())
                    if score and post is None:
                        terms = self.module_.loss(batch, generator=score_gen, n_samples=n_samples)
                    elif score:
                        # draws shared by the chunk's samples: a sample's score does not
                        # depend on the chunk it is in (nor do its refined posterior's draws)
                        eps = torch.randn((n_samples, 1, post.mean.shape[1]),
                                          dtype=post.mean.dtype,
                                          generator=torch.Generator().manual_seed(self.seed_ + 3))
                        terms = dense_loss_terms(post.mean, post.log_var, prior, batch.counts,
                                                 eps, batch.log_const)
                    if score:
                        scores.append(terms.negative_elbo().double().numpy())
        emb = np.concatenate(embeddings) @ self.rotation_ if embed else None
        return emb, (np.concatenate(scores) if score else None)

    @staticmethod
    def _copies(score: bool, refine: bool, n_samples: int) -> int:
        """Dense (rows, D) buffers live at once in :meth:`_infer` (sizes its chunks)."""
        return max(4 * n_samples if score else 4, 16 if refine else 4)

    def _transform_csr(self, M, refine: bool = True) -> np.ndarray:
        return self._infer(self._batches(M, copies=self._copies(False, refine, 0)),
                           embed=True, score=False, refine=refine)[0]

    def transform(self, X, *, layer: str | None = None, refine: bool = True) -> np.ndarray:
        """Sample embeddings: posterior means of z in the ordered orthogonal form, shape (n, k).

        With ``refine`` (default) each sample's posterior is refined from the encoder's output,
        decoder frozen (docs/model.md, "Refined posteriors"): the samples a model was trained on
        and new ones are then embedded the same way. ``refine=False`` uses the encoder alone
        (faster; what the encoder learnt, not what the decoder supports). New tables may have
        their features in another order or be a subset/superset when given as AnnData or
        DataFrame: missing features are zero-filled and unknown ones dropped, with a warning.
        ``X`` may also be a :class:`~mvae.io.streaming.StreamingCounts` with the model's
        features (read chunk by chunk).
        """
        self._check_fitted()
        return self._infer(self._chunks(X, layer, self._copies(False, refine, 0)),
                           embed=True, score=False, refine=refine)[0]

    def _check_stream_features(self, data) -> None:
        if list(data.feature_ids) != self.feature_ids_:
            raise InputError("the streamed table's features differ from the model's; open it "
                             "with StreamingCounts(path, features=model.kept_feature_index_)")

    def fit_transform(self, X, *, layer: str | None = None) -> np.ndarray:
        """``fit(X)`` then ``transform(X)``."""
        return self.fit(X, layer=layer).transform(X, layer=layer)

    def score_samples(self, X, *, layer: str | None = None, n_samples: int = 16,
                      refine: bool = True) -> np.ndarray:
        """Per-sample negative ELBO in nats (higher = more anomalous), shape (n,).

        With ``refine`` (default) each sample's posterior is first refined from the encoder's
        output with the decoder frozen, so samples the model was not trained on are scored like
        the ones it was (the encoder alone fits its training samples better, which would mix
        "unusual" with "new"; docs/model.md). Monte Carlo estimate with ``n_samples`` draws at
        every feature (each chunk of samples is made dense for it, so sparse and dense tables
        get the same estimator) and noise fixed by the model's seed, so repeated calls agree.
        Divide by the sample's depth for a per-read score. ``X`` may also be a
        :class:`~mvae.io.streaming.StreamingCounts` with the model's features.
        """
        self._check_fitted()
        return self._infer(self._chunks(X, layer, self._copies(True, refine, n_samples)),
                           embed=False, score=True, refine=refine, n_samples=n_samples)[1]

    def embed_and_score(self, X, *, layer: str | None = None, n_samples: int = 16,
                        refine: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(transform(X), score_samples(X))`` from one refinement of each sample's posterior
        (half the work of the two calls)."""
        self._check_fitted()
        return self._infer(self._chunks(X, layer, self._copies(True, refine, n_samples)),
                           embed=True, score=True, refine=refine, n_samples=n_samples)

    def denoise(self, X, *, layer: str | None = None, refine: bool = True) -> np.ndarray:
        """Denoised compositions softmax(W̃ E[z | x] + b̃), shape (n, D), rows summing to 1
        (``refine`` as in :meth:`transform`)."""
        self._check_fitted()
        M, _ = self._aligned(X, layer)
        z = self._transform_csr(M, refine) @ self.rotation_.T  # back to the module's own axes
        W, b = self._decoder()
        logits = z @ W.T + b  # (n, k) @ (k, D) -> (n, D)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def sample(self, n: int, *, depth=None, random_state=None) -> np.ndarray:
        """Draw new count samples from the generative model, shape (n, D) int64.

        Parameters
        ----------
        n : int
            Number of samples.
        depth : int, array of shape (n,), or None
            Reads per sample; default: drawn from the training samples' depths.
        random_state : int or None
        """
        self._check_fitted()
        rng = np.random.default_rng(random_state)
        if depth is None:
            depths = rng.choice(self.train_depths_, size=n).astype(np.int64)
        else:
            depths = np.broadcast_to(np.asarray(depth, dtype=np.int64), (n,))
            if (depths < 0).any():
                raise InputError(f"depth must be >= 0, got {depths.min()}")
        W, b = self._decoder()
        sigma = math.sqrt(self.noise_variance_)
        z = rng.standard_normal((n, W.shape[1]))
        logits = z @ W.T + b + sigma * rng.standard_normal((n, W.shape[0]))
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        return rng.multinomial(depths, p).astype(np.int64)

    # ------------------------------------------------------------------ learned structure
    def loadings(self, space: str = "clr"):
        """Feature loadings in the ordered orthogonal form as a DataFrame.

        ``space="clr"``: features x axes (Ψ W); ``space="ilr"``: balances x axes (W), balance names
        from the basis (tree node names when a tree was given).
        """
        import pandas as pd

        self._check_fitted()
        cols = [f"axis{i + 1}" for i in range(self.components_.shape[1])]
        if space == "clr":
            return pd.DataFrame(self.components_, index=self.feature_ids_, columns=cols)
        if space == "ilr":
            ilr = self.basis_.forward(self.components_.T).T  # (D-1, k)
            return pd.DataFrame(ilr, index=list(self.basis_.balance_names), columns=cols)
        raise ValueError(f"space={space!r}; choose 'clr' or 'ilr'")

    def covariance(self, space: str = "clr"):
        """Covariance of the log-ratios, low rank plus isotropic, as a LowRankCovariance.

        clr: Σ = W̃W̃ᵀ + σ²H (D x D); ilr: Σ = WWᵀ + σ²I (D−1 x D−1). Call ``.dense()`` for a matrix.
        """
        from .maths.covariance import LowRankCovariance

        self._check_fitted()
        if space == "clr":
            return LowRankCovariance(self.components_, self.noise_variance_, space="clr",
                                     feature_ids=self.feature_ids_)
        if space == "ilr":
            ilr = self.basis_.forward(self.components_.T).T
            return LowRankCovariance(ilr, self.noise_variance_, space="ilr",
                                     feature_ids=list(self.basis_.balance_names))
        raise ValueError(f"space={space!r}; choose 'clr' or 'ilr'")

    def correlation(self, space: str = "clr", *, max_bytes: int = 2**30) -> np.ndarray:
        """Dense correlation matrix of the log-ratios (refused above ``max_bytes``; for large D use
        ``network()``, which never forms D x D)."""
        return self.covariance(space).correlation_dense(max_bytes=max_bytes)

    def network(self, top: int = 1000, *, min_abs: float = 0.0):
        """Strongest feature–feature clr correlations as an edge list (DataFrame), computed in chunks
        (numpy BLAS limited to ``threads``)."""
        from .training.loop import torch_threads

        with torch_threads(self.threads):
            return self.covariance("clr").top_correlations(top, min_abs=min_abs)

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Write ``model.safetensors`` and ``config.json`` into directory ``path`` (no pickle)."""
        import torch

        from .training.checkpoint import write_model_files
        from .io.outputs import package_versions

        self._check_fitted()
        tensors = {f"module.{k}": v.detach().cpu().contiguous()
                   for k, v in self.module_.state_dict().items()}
        tensors["train_depths"] = torch.as_tensor(self.train_depths_, dtype=torch.float64)
        tensors["kept_feature_index"] = torch.as_tensor(self.kept_feature_index_, dtype=torch.int64)
        params = self.get_params()
        if params["tree"] is not None and not isinstance(params["tree"], (str, Path)):
            params["tree"] = None  # the tree is carried by the basis config below
        params["tree"] = None if params["tree"] is None else str(params["tree"])
        config = {
            "format": _FORMAT,
            "schema_version": SCHEMA_VERSION,
            "params": params,
            "module_config": asdict(self.module_.config),
            "seed": self.seed_,
            "best_epoch": self.best_epoch_,
            "polish": getattr(self, "polish_", None),
            "feature_ids": self.feature_ids_,
            "input_feature_ids": self.input_feature_ids_,
            "basis": self.basis_.to_config(),
            "history": self.history_.to_dict(orient="list"),
            "filtered": self.filtered_.to_dict(orient="list"),
            "versions": package_versions(),
        }
        # written atomically: an interrupted save never leaves a half-written model file
        write_model_files(path, tensors, config)

    @classmethod
    def load(cls, path) -> "MultinomialVAE":
        """Load a model written by :meth:`save` (safetensors + JSON; never unpickles)."""
        import pandas as pd

        from .training.checkpoint import read_model_files
        from .maths.bases import basis_from_config
        from .counts import MultinomialVAEModule, MVAEConfig

        path = Path(path)
        cfg_path = path / "config.json"
        config, tensors = read_model_files(
            path, formats=(_FORMAT,), schema_version=SCHEMA_VERSION,
            wrong_format=lambda fmt: "not an mvae MultinomialVAE config")
        _refuse_retired_settings(config, cfg_path)
        try:
            for part in ("params", "module_config"):
                if not isinstance(config.get(part), dict):
                    raise TypeError(f"{part!r} must be a JSON object, got "
                                    f"{type(config.get(part)).__name__}")
            model = cls(**config["params"])
            mconf = MVAEConfig(**config["module_config"])
            state = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
            _check_module_shapes(mconf, state)  # before any allocation the config asks for
            module = MultinomialVAEModule(mconf)
            module.load_state_dict(state, strict=True)
            model.module_ = module.eval()
            model.seed_ = int(config["seed"])
            model.best_epoch_ = config.get("best_epoch")
            model.polish_ = config.get("polish")
            model.feature_ids_ = list(config["feature_ids"])
            model._feature_index = {f: i for i, f in enumerate(model.feature_ids_)}
            model.input_feature_ids_ = list(config["input_feature_ids"])
            model.kept_feature_index_ = tensors["kept_feature_index"].numpy()
            model.n_features_in_ = len(model.input_feature_ids_)
            model.train_depths_ = tensors["train_depths"].numpy()
            model.basis_ = basis_from_config(config["basis"])
            model.history_ = pd.DataFrame(config["history"])
            model.filtered_ = pd.DataFrame(config["filtered"])
            model._check_params(mconf.n_features)
            if (mconf.n_latent, mconf.encoder_depth, mconf.n_hidden, mconf.objective) != (
                    model.n_latent, model.encoder_depth, model.n_hidden, model.objective):
                raise ValueError("params and module_config disagree")
            _check_loaded_features(model, mconf.n_features)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError,
                InputError) as exc:
            detail = " ".join(str(exc).split())[:300]  # one line, bounded
            raise ModelFileError(f"{path}: the config and tensors do not describe a valid model "
                                 f"({type(exc).__name__}: {detail})") from exc
        if len(model.feature_ids_) != mconf.n_features:
            raise ModelFileError(f"{cfg_path}: {len(model.feature_ids_)} feature ids but the "
                                 f"tensors have {mconf.n_features} features")
        model._set_ordered_form()
        return model


#: Settings that earlier versions accepted and this one has retired: name -> (the value that is
#: still what the model does, or None when every recorded value is retired; the last version
#: that reads a file recording another value).
RETIRED_SETTINGS = {"posterior": ("factored", "0.1.0"), "reconstruction": ("auto", "0.1.0")}


def _refuse_retired_settings(config, cfg_path) -> None:
    """Drop retired settings that name what the model still does; refuse any other value with a
    ModelFileError naming the setting and the last version that reads it. Edits ``config``."""
    params, module_config = config.get("params"), config.get("module_config")
    if not isinstance(params, dict) or not isinstance(module_config, dict):
        return  # the general checks in load() report a malformed config
    for name, (kept, last_version) in RETIRED_SETTINGS.items():
        value = params.pop(name, kept)
        module_config.pop(name, None)  # the module's record of the same choice (or its resolution)
        applies = name != "posterior" or params.get("objective", "marginal") == "marginal"
        if applies and value != kept:
            raise ModelFileError(
                f"{cfg_path}: this model was fitted with {name}={value!r}, a setting this version "
                f"of mvae no longer has (only the default, {name}={kept!r}, remains). mvae "
                f"{last_version} is the last version that reads it: load it there "
                f"(pip install 'mvae=={last_version}'), or refit the table with this version.")


def _dense_batch(batch):
    """A CountBatch with dense counts (the Monte Carlo estimator draws at every feature)."""
    from .training.batches import CountBatch

    if not batch.counts.is_sparse:
        return batch
    return CountBatch(batch.counts.to_dense(), batch.log_const)
def _check_fit_options(model, checkpoint, checkpoint_every, resume) -> None:
    """The checkpointing options of fit / fit_stream, before any work.

    A file at ``checkpoint`` that is not an mvae checkpoint is never overwritten; ``resume``
    without a checkpoint path is an error, and with a path where no checkpoint is yet a warning
    (a job that always passes ``resume=True`` starts from the beginning the first time).
    """
    from .training.checkpoint import check_checkpoint_target
    from .training.loop import CHECKPOINT_FORMAT
    from .io.validation import check_seed, check_threads
    from .training.loop import usable_cores

    if not (isinstance(checkpoint_every, (int, np.integer)) and not isinstance(
            checkpoint_every, bool) and checkpoint_every >= 0):
        raise InputError(f"checkpoint_every={checkpoint_every!r} is not allowed: need an integer "
                         ">= 0 (0: write a checkpoint only when interrupted)")
    if checkpoint_every and checkpoint is None:
        raise InputError(f"checkpoint_every={checkpoint_every} needs checkpoint=PATH")
    if resume and checkpoint is None:
        raise InputError("resume=True needs checkpoint=PATH (the checkpoint to continue from)")
    check_seed(model.random_state)
    check_threads(model.threads)
    if resume and model.random_state is None:
        raise InputError("resume=True needs a fixed random_state (the checkpoint records "
                         "the seed it was started with)")
    if checkpoint is not None:
        check_checkpoint_target(checkpoint, format=CHECKPOINT_FORMAT)
        if resume and not Path(checkpoint).is_file():
            warnings.warn(f"resume=True but there is no checkpoint at {checkpoint} yet: starting "
                          "from the beginning", UserWarning, stacklevel=3)
    if model.threads is not None and model.threads > usable_cores():
        warnings.warn(f"threads={model.threads} is more than the {usable_cores()} cores this "
                      f"process may use; using {usable_cores()}", UserWarning, stacklevel=3)


def _check_module_shapes(mconf, state: dict) -> None:
    """The tensors a module built from ``mconf`` would have, against those of the file.

    The module is built on torch's ``meta`` device (shapes only, no memory), so a config that
    asks for 3·10⁸ latent dimensions is refused by its shapes instead of being allocated.
    """
    import torch

    from .counts import MultinomialVAEModule

    for name in ("n_features", "n_latent", "n_hidden", "encoder_depth", "posterior_rank"):
        v = getattr(mconf, name, None)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"module_config {name}={v!r}: need an integer >= 1")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in MultinomialVAEModule(mconf).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise ValueError(f"Missing tensors for the configured module: {missing[:5]}")
    if unexpected:
        raise ValueError(f"Unexpected tensors for the configured module: {unexpected[:5]}")
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise ValueError(f"size mismatch for {k}: the file holds {tuple(state[k].shape)}, "
                             f"the config describes {shape}")


def _check_loaded_features(model, n_features: int) -> None:
    """Feature ids, the kept-feature index and the training depths of a loaded model agree."""
    ids, inputs = model.feature_ids_, model.input_feature_ids_
    if len(ids) != n_features:
        raise ValueError(f"{len(ids)} feature ids but the tensors have {n_features} features")
    for name, values in (("feature_ids", ids), ("input_feature_ids", inputs)):
        if not all(isinstance(v, str) for v in values):
            raise ValueError(f"{name} must be strings")
        if len(set(values)) != len(values):
            dup = [v for v, c in Counter(values).items() if c > 1][:3]
            raise ValueError(f"{name} holds duplicates, e.g. {dup}")
    kept = np.asarray(model.kept_feature_index_)
    if (kept.ndim != 1 or kept.dtype.kind not in "iu" or len(kept) != len(ids)
            or (len(kept) and (kept.min() < 0 or kept.max() >= len(inputs)))
            or np.any(np.diff(kept) <= 0)):
        raise ValueError(f"kept_feature_index must be {len(ids)} increasing positions among the "
                         f"{len(inputs)} input features")
    if [inputs[i] for i in kept] != ids:
        raise ValueError("feature_ids are not the input features that kept_feature_index names")
    depths = np.asarray(model.train_depths_)
    if depths.ndim != 1 or len(depths) == 0 or not np.all(np.isfinite(depths)) or np.any(
            depths < 1):
        raise ValueError("train_depths must be the training samples' depths (finite, >= 1, at "
                         "least one)")


#: Dense entries per inference chunk (rows x features x copies): about 64 MB of float32.
INFERENCE_ENTRIES = 2**24
#: An axis whose variance is below this fraction of σ² counts as collapsed.
COLLAPSE_RATIO = 0.01
#: Samples with fewer reads than this get a warning naming them.
LOW_DEPTH = 50
class CollapsedDimensionsWarning(UserWarning):
    """Some latent dimensions carry (almost) no variance after fitting."""


class CountsWarning(UserWarning):
    """Counts that will fit but deserve a look (very shallow samples, huge counts)."""


def _check_depths(depths, sample_ids, *, streamed: bool, name) -> None:
    """Refuse what a fit cannot do exactly, warn about samples too shallow to trust.

    Deep samples are scored exactly in float64 (``mvae.training.batches.EXACT_DEPTH``) when the
    table is in memory; streamed batches are float32 only, so a streamed table with deeper
    samples is refused rather than fitted inexactly.
    """
    from .training.batches import EXACT_DEPTH

    if streamed and len(depths) and depths.max() > EXACT_DEPTH:
        raise InputError(f"{name}: samples with more than "
                         f"{EXACT_DEPTH} reads (largest {int(depths.max())}) need exact float64 "
                         "sums, which streamed training does not have yet; fit the table in "
                         "memory (drop --stream)")
    low = np.flatnonzero(depths < LOW_DEPTH)
    if len(low):
        shown = ", ".join(f"{sample_ids[i]!r} ({int(depths[i])})" for i in low[:5])
        warnings.warn(f"{len(low)} samples have fewer than {LOW_DEPTH} reads: {shown}"
                      f"{' ...' if len(low) > 5 else ''}; their embeddings are uncertain and they "
                      "may score as anomalies", CountsWarning, stacklevel=3)


def _dropped_report(dropped_samples, dropped_features):
    """The samples and features a fit dropped, as ``filtered_`` (axis, id, reason)."""
    import pandas as pd

    return pd.DataFrame({"axis": ["sample"] * len(dropped_samples)
                         + ["feature"] * len(dropped_features),
                         "id": list(dropped_samples) + list(dropped_features),
                         "reason": "all-zero"})


#: Largest number of matrix entries (samples x features) used for the PCA initialisation.
PCA_INIT_ENTRIES = 2 * 10**7


def _polish(module, read_rows, n_train: int, valid_data, score, sharded: bool,
            seed: int) -> dict | None:
    """:func:`mvae.training.polish.polish_decoder` with the fit's validation score as its guard
    (summed over the ranks when the validation split is sharded, so every rank keeps the same
    iterate)."""
    from .training.distributed import current
    from .training.loop import validation_sum
    from .training.polish import polish_decoder

    dist = current() if sharded else None
    count = len(score) if score is not None else 0
    if dist is not None:  # every rank takes the same branch
        count = int(dist.sum([count])[0])
    if count == 0:
        return None

    def validate(mod) -> float:
        total, n = validation_sum(mod, valid_data, score, seed, dist)
        return float(total / n)

    return polish_decoder(module, read_rows, n_train, validate, seed=seed)


def _pca_initialise(module, n: int, read_rows, rng) -> None:
    """Set W̃ and σ from probabilistic PCA of clr(x + c) on a random subset of the n samples.

    ``read_rows(index)`` returns those training rows as a CSR matrix (in memory or streamed).
    """
    import torch

    from .maths.pca import clr_pca

    D = module.config.n_features
    k = module.config.n_latent
    rows = int(min(n, max(2 * (k + 1), PCA_INIT_ENTRIES // D)))
    if rows <= k + 1:  # too few samples for k components: keep the random start
        return
    subset = np.sort(rng.choice(n, size=rows, replace=False)) if rows < n else np.arange(n)
    pca = clr_pca(read_rows(subset), k, pseudocount=module.config.pseudocount, top_only=True)
    with torch.no_grad():
        module.loadings_raw.copy_(torch.as_tensor(pca.loadings_clr, dtype=torch.float32))
        module.log_sigma.fill_(0.5 * math.log(max(float(pca.noise_variance), 1e-4)))


#: Early stopping's relative tolerance: training ends once ``patience`` epochs have passed
#: without the validation score improving by more than this fraction (the best epoch's weights
#: are restored). Measured on the refined validation score in benchmarks/results/selection/.
STOP_TOLERANCE = 1e-3
#: Optimiser steps the automatic epoch budget aims at, and the patience in steps.
BUDGET_STEPS = 5000
PATIENCE_STEPS = 300


def _epoch_budget(n_train: int, batch_size: int, max_epochs, patience) -> tuple[int, int]:
    """Epochs and early-stopping patience; ``None`` means chosen from the number of steps per epoch.

    Small tables have one step per epoch, large ones many: counting steps keeps the optimisation
    budget comparable (about BUDGET_STEPS steps, 100 to 3000 epochs; patience about PATIENCE_STEPS
    steps, at least 20 epochs).
    """
    steps = max(1, n_train // max(1, min(batch_size, n_train)))
    if max_epochs is None:
        max_epochs = int(np.clip(math.ceil(BUDGET_STEPS / steps), 100, 3000))
    if patience is None:
        patience = max(20, math.ceil(PATIENCE_STEPS / steps))
    return int(max_epochs), int(patience)
