"""The asset graph: manifest -> subset -> embeddings -> (projection head) -> transform -> index ->
evaluation, with hashes and clusters."""

from vsearch_pipeline.assets.clusters import clusters
from vsearch_pipeline.assets.curation import curation_grounding
from vsearch_pipeline.assets.embeddings import embeddings
from vsearch_pipeline.assets.evaluation import evaluation
from vsearch_pipeline.assets.hashes import near_duplicate_groups, perceptual_hashes
from vsearch_pipeline.assets.index import faiss_index
from vsearch_pipeline.assets.insight import collection_insight
from vsearch_pipeline.assets.manifest import raw_image_manifest
from vsearch_pipeline.assets.projection_head import projection_head
from vsearch_pipeline.assets.retrieval import retrieval_transform
from vsearch_pipeline.assets.subset import sampled_subset

PER_BATCH_ASSETS = [raw_image_manifest, sampled_subset, embeddings, perceptual_hashes]
COLLECTION_ASSETS = [near_duplicate_groups, projection_head, retrieval_transform, faiss_index, clusters,
                     curation_grounding, evaluation, collection_insight]
ALL_ASSETS = PER_BATCH_ASSETS + COLLECTION_ASSETS
