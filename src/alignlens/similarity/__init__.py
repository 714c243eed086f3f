"""Representation similarity across languages on parallel items (pure functions, float64).

Inputs are captured hidden states per language, ``[n_items, n_layers, d_model]``, where row ``i``
is the same item (a translation) in every language. Per layer English is compared with every
language by mean per-item cosine (raw and centred), the paper's PCA-Pearson (Zhang et al. 2024),
linear CKA (biased and debiased) and parallel-item retrieval, with paired bootstrap intervals over
items. Modules, bottom to top:

- `resampling`: the bootstrap plan (`bootstrap_counts`), unbiased HSIC / debiased CKA of every
  resample, the exact PC1 refit per resample, BC intervals, the stored replicates' encoding;
- `measures`: cosine, CKA (biased, debiased), retrieval, PCA-Pearson, the all-pairs matrices;
- `outliers`: outlier dimensions and the robust variant's states;
- `analysis`: `similarity_report` and `similarity_analysis`, a task's entry of similarity.json;
- `change`: stored replicates read back, paired changes between two runs (`similarity_change`).

Every public name is re-exported here. A test that patches a module constant (``PCA_BOOT_TOL``,
``_EIGH_MAX``) patches the submodule that reads it (`resampling`, `measures`).
"""

from alignlens.similarity.analysis import (INTERVAL_METRICS, PAPER_PCA_LANGUAGES, PAPER_SCATTER_LANGUAGES, REPORT_KEYS,
                                           default_scatter_layers, resolve_pca_languages, similarity_analysis,
                                           similarity_report)
from alignlens.similarity.change import arr_of, mean_replicates, replicates, similarity_change, summary_interval
from alignlens.similarity.measures import (CKA_MIN_ITEMS, ArrayLike, cosine_per_item, linear_cka, linear_cka_debiased,
                                           mean_cosine, pairwise_matrices, pca_pearson, pca_scores, retrieval_accuracy,
                                           unbiased_hsic)
from alignlens.similarity.outliers import (MAX_OUTLIER_DIMS, OUTLIER_FACTOR, ROBUST_METHODS, TOP_DIMS,
                                           outlier_dimensions, robust_states)
from alignlens.similarity.resampling import (BOOTSTRAP_GENERATOR, PCA_BOOT_DIRECT_RANK, PCA_BOOT_ITERATIONS,
                                             PCA_BOOT_SUBSPACE, PCA_BOOT_TOL, REPLICATE_ENCODING, bc_interval,
                                             bootstrap_counts, decode_replicates)

__all__ = [
    "ArrayLike", "cosine_per_item", "mean_cosine", "linear_cka", "linear_cka_debiased", "unbiased_hsic",
    "retrieval_accuracy", "pca_scores", "pca_pearson", "pairwise_matrices", "CKA_MIN_ITEMS",
    "bootstrap_counts", "bc_interval", "decode_replicates", "BOOTSTRAP_GENERATOR", "REPLICATE_ENCODING",
    "PCA_BOOT_DIRECT_RANK", "PCA_BOOT_SUBSPACE", "PCA_BOOT_TOL", "PCA_BOOT_ITERATIONS",
    "outlier_dimensions", "robust_states", "ROBUST_METHODS", "OUTLIER_FACTOR", "MAX_OUTLIER_DIMS", "TOP_DIMS",
    "similarity_report", "similarity_analysis", "resolve_pca_languages", "default_scatter_layers", "REPORT_KEYS",
    "INTERVAL_METRICS", "PAPER_PCA_LANGUAGES", "PAPER_SCATTER_LANGUAGES",
    "similarity_change", "replicates", "mean_replicates", "summary_interval", "arr_of",
]
