"""The composition root: the only code that reads a whole config and wires the libraries.

  maxlm.run.pretrain    train(config, workdir): pretraining, stages, distillation
  maxlm.run.stages      the stage command: sub-stages, domain-loss report
  maxlm.run.distill     a distillation run's loss and step (teacher online or offline)
  maxlm.run.evaluators  held-out evaluation and probes as loop hooks
  maxlm.run.cli         flags, quiet logging and exit codes of the commands

(The offline teacher's top-k store is its own command, maxlm.distill.precompute.)
The map of the whole project: docs/architecture.md.
"""
