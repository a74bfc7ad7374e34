"""Evaluation: how well a fit recovers a known truth, and what users would run instead.

Everything here serves the comparisons (docs/benchmarks.md), not a fit: ``mvae fit`` and
:class:`mvae.MultinomialVAE` never import this package. New benchmark runners, baselines and
recovery metrics go here.

- :mod:`~mvae.evaluation.simulate` -- seeded count tables drawn from the generative model, with
  their ground truth (``mvae simulate``, ``mvae.simulate``);
- :mod:`~mvae.evaluation.metrics` -- recovery metrics against that truth (subspaces, covariances,
  correlations, embeddings);
- :mod:`~mvae.evaluation.baselines` -- clr + PCA, multiplicative replacement + PCA, the sample clr
  covariance, SparCC, robust Aitchison PCA and PLN-PCA on the same tables;
- :mod:`~mvae.evaluation.nonamortised` -- the non-amortised reference: the MVAE's decoder with
  per-sample posteriors optimised directly, no encoder;
- :mod:`~mvae.evaluation.encoder_depth` -- the encoder-depth benchmark runner;
- :mod:`~mvae.evaluation.cli` -- the ``mvae benchmark`` command group.

Submodules are imported on use (``from mvae.evaluation.metrics import subspace_distance``); this
package imports none of them, so importing it costs nothing.
"""
