"""The end-to-end demo's embedded model and task.

- task.py: seeded arithmetic problems of graded difficulty (levels 1-5), the
  few-shot chat prefix, the reply format ``"= {answer}"`` and ``verify``;
- tokenizer.py: the character-level tokenizer with a ChatML chat template;
- shared_prefix.py: exact forward/backward, and HF generate, of a batch
  sharing one prefix, with the prefix run once (~3-5x faster here);
- pretrain.py: the seeded script that pre-trained the shipped model;
- assets.py: ``default_model_dir()`` and ``load_default_model()`` for the
  shipped ~1.1M-parameter Llama in ``assets/model`` (partly trained: easy
  problems mostly solved, hard ones rarely, and a habit of restating the
  problem on ~1/4 of sampled replies, so RL has room to improve it).
"""
