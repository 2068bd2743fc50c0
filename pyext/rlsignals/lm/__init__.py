"""Running a causal language model the ways this package needs, each written once:

- capture.py: forward hooks that read a module's input (and stop the forward there);
- prefix.py: ``SharedPrefix``, a prefix run once whose keys/values a batch of
  continuations reads (scoring, the trainer's log-probabilities, generation);
- generate.py: prompts -> completions with a shared prefix run once (rollouts, evaluation).
"""
