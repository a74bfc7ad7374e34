"""Compositional maths, likelihoods and covariance: the bottom of the package.

Pure functions and small value classes over numpy arrays and torch tensors; no torch modules (no
learned parameters), no files, nothing from the rest of mvae but :mod:`mvae.errors`.

- :mod:`~mvae.maths.compositions` -- ILR bases (Helmert, tree balances) with O(D) transforms, clr;
- :mod:`~mvae.maths.likelihoods` -- multinomial log-likelihoods, KL divergences, the low-rank prior;
- :mod:`~mvae.maths.factored` -- the fused, chunked likelihood of the count model's posterior;
- :mod:`~mvae.maths.sparse_ops` -- sparse products and segment sums the two above share;
- :mod:`~mvae.maths.covariance` -- the fitted low-rank-plus-isotropic covariance and its network;
- :mod:`~mvae.maths.pca` -- probabilistic PCA of clr(x + c), the count model's starting point and
  the clr + PCA baseline.
"""
