"""The composition root: the only code that reads a whole config and wires the libraries.

  maxlm.run.pretrain    train(config, workdir): pretraining, stages, distillation
  maxlm.run.stages      the stage command: sub-stages, domain-loss report
  maxlm.run.distill     a distillation run's loss and step (teacher online or offline)
  maxlm.run.precompute  the offline teacher's top-k store
  maxlm.run.evaluators  held-out evaluation and probes as loop hooks
  maxlm.run.cli         flags, quiet logging and exit codes of the commands
"""
