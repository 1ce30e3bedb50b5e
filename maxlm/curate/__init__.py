"""Data curation on Apache Beam: read, normalise, language ID, quality rules, scores,
dedup, boilerplate lines, decontam.

Each stage is a Beam PTransform usable alone; `pipeline.run` wires them from
configs/curate.py. The rule functions (rules.py, minhash.py, normalize.py,
classifier.py) are plain Python and need no Beam. `ModelScore` lives in
maxlm.curate.modelscore and is not imported here: it pulls in jax.
"""

from maxlm.curate.classifier import Classifier, ClassifierScore
from maxlm.curate.decontam import Decontaminate
from maxlm.curate.dedup import Boilerplate, ConnectedComponents, ExactDedup, NearDedup
from maxlm.curate.pipeline import build_pipeline, run
from maxlm.curate.read import ReadDocuments
from maxlm.curate.stages import (C4Lines, DocStage, FineWebQuality, GopherQuality, GopherRepetition,
                                 LanguageId, Normalize)

__all__ = ["Boilerplate", "C4Lines", "Classifier", "ClassifierScore", "ConnectedComponents",
           "Decontaminate", "DocStage", "ExactDedup", "FineWebQuality", "GopherQuality",
           "GopherRepetition", "LanguageId", "NearDedup", "Normalize", "ReadDocuments",
           "build_pipeline", "run"]
