"""Segmentation model: preprocessing + clustering in one PipelineModel, k selection, profiles.

* :mod:`segspark.model.pipeline` — the Spark ML pipeline (raw features -> ``segment_id``);
* :mod:`segspark.model.metrics` — silhouette, Calinski-Harabasz, Davies-Bouldin, WSSSE, ARI,
  clusterwise Jaccard, computed in Spark;
* :mod:`segspark.model.select` — the k sweep, bootstrap stability and the choice rule;
* :mod:`segspark.model.profile` — segment profiles and automatic names;
* :mod:`segspark.model.artifacts` — MLflow metrics, plots and tables.

Example:
    >>> from segspark.model import profile_segments, select_model
    >>> result = select_model(features_df, settings=settings.model)
    >>> scored = result.model.transform(features_df)
    >>> profiles = profile_segments(scored, settings.model)
"""

from __future__ import annotations

from segspark.model.metrics import (
    ClusterStats,
    SilhouetteEstimate,
    adjusted_rand_index,
    ari_from_contingency,
    calinski_harabasz,
    cluster_stats,
    contingency,
    davies_bouldin,
    jaccard_recovery,
    segment_jaccard,
    silhouette,
    wssse,
)
from segspark.model.pipeline import (
    SEGMENT_COL,
    Algorithm,
    cluster_centers,
    clusterer_of,
    fit_clusterer,
    fit_pipeline,
    fit_vectors,
    segment_mapping,
    with_segment_mapping,
)
from segspark.model.profile import (
    SegmentProfiles,
    name_segments,
    profile_segments,
    segment_feature_profiles,
    segment_profiles,
)
from segspark.model.select import KMetrics, SelectionResult, choose_k, select_model

__all__ = [
    "SEGMENT_COL",
    "Algorithm",
    "ClusterStats",
    "KMetrics",
    "SegmentProfiles",
    "SelectionResult",
    "SilhouetteEstimate",
    "adjusted_rand_index",
    "ari_from_contingency",
    "calinski_harabasz",
    "choose_k",
    "cluster_centers",
    "cluster_stats",
    "clusterer_of",
    "contingency",
    "davies_bouldin",
    "fit_clusterer",
    "fit_pipeline",
    "fit_vectors",
    "jaccard_recovery",
    "name_segments",
    "profile_segments",
    "segment_feature_profiles",
    "segment_jaccard",
    "segment_mapping",
    "segment_profiles",
    "select_model",
    "silhouette",
    "with_segment_mapping",
    "wssse",
]
