"""Data curation on Apache Beam: read, normalise, language ID, quality rules, dedup, decontam.

Each stage is a Beam PTransform usable alone; `pipeline.run` wires them from
configs/curate.py. The rule functions (rules.py, minhash.py, normalize.py) are
plain Python and need no Beam.
"""

from maxlm.curate.decontam import Decontaminate
from maxlm.curate.dedup import ConnectedComponents, ExactDedup, NearDedup
from maxlm.curate.pipeline import build_pipeline, run
from maxlm.curate.read import ReadDocuments
from maxlm.curate.stages import (C4Lines, DocStage, FineWebQuality, GopherQuality, GopherRepetition,
                                 LanguageId, Normalize)

__all__ = ["C4Lines", "ConnectedComponents", "Decontaminate", "DocStage", "ExactDedup",
           "FineWebQuality", "GopherQuality", "GopherRepetition", "LanguageId", "NearDedup",
           "Normalize", "ReadDocuments", "build_pipeline", "run"]
