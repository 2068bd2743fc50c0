"""The end-to-end demo's embedded model and task.

- task.py: seeded arithmetic problems of graded difficulty (levels 1-5), the
  few-shot chat prefix, the reply format ``"= {answer}"`` and ``verify``;
- tokenizer.py: the character-level tokenizer with a ChatML chat template;
- sft.py: the short SFT run the demo compares RL's update with;
- pretrain.py: the seeded script that pre-trained the shipped model;
- assets.py: ``default_model_dir()`` and ``load_default_model()`` for the
  shipped ~1.1M-parameter Llama in ``assets/model`` (partly trained, with a
  planted carry slip that is its greedy answer on a real share of the
  problems it can solve: see task.py for how it was built);
- run.py: the demo; stats.py: bootstrap/t intervals, curve crossings, pass@k;
  claims.py: the papers' claims table; study.py: the demo over several seeds.
"""
